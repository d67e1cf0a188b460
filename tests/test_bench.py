"""models.bench on a tiny input: the table's JSON has every tier, and each decoder fraction is
taken against the matmul timed beside it (checked by recomputing it from the recorded times).
models.product_bound runs exactly the products the decoder's MAC count holds."""

import json

import numpy as np
import pytest
import torch
from model_support import counting
from PIL import Image

from models import bench, budget_frontier, product_bound, registry
from models.implicit import chunked_band_pixels


def test_bench_writes_every_tier_with_side_by_side_peak(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["--methods", "moeisr", "--scales", "2", "--size", "12", "--repeats", "1", "--threads", "1"]
    assert (
        bench.main([*args, "--gemm-widths", "16,64", "--gemm-shapes", "64x4x32,100x16x3", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["cpu"]  # the CPU model the timings belong to
    rows = result["rows"]
    assert [r["tier"] for r in rows] == ["b0", "b25", "b45", "b70", "full"]
    for r in rows:
        assert r["matmul_gflops_beside"] > 0 and r["latency_ms"] > 0 and r["encode_ms"] > 0
        # One repeat: the fraction is that timing's decoder GFLOP/s over the matmul beside it.
        assert abs(r["decoder_fraction_of_matmul"] - r["decoder_gflops"] / r["matmul_gflops_beside"]) < 1e-9
        assert r["decoder_fractions"] == [r["decoder_fraction_of_matmul"]]
    assert set(result["cheapest_over_richest_latency"]) == {"moeisr x2"}
    shapes = [(g["rows"], g["k"], g["n"]) for g in result["bare_gemms"]]
    # A width's rows are the query tile of a Galerkin decoder that wide.
    assert shapes == [(16384, 16, 16), (16384, 64, 64), (64, 4, 32), (100, 16, 3)]
    assert all(g["fraction_of_matmul"] > 0 for g in result["bare_gemms"])
    # Only outputs a few channels wide time the RGB loop beside BLAS.
    assert [("loop_over_plain" in g) for g in result["bare_gemms"]] == [False, False, False, True]
    assert (
        result["bare_gemms"][-1]["loop_over_plain"] > 0
        and result["bare_gemms"][-1]["loop_over_transposed"] > 0
    )


def test_budget_frontier_reports_quality_and_latency_against_the_full_model(tmp_path) -> None:
    """Every budget gets a PSNR, its distance to the full model and a latency ratio timed in the
    same run; MACs follow the budget; budgets outside [0, 1] are refused."""
    folder = tmp_path / "hr"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "frontier.json"
    args = ["--budgets", "1,0,0.3", "--data", str(folder), "--scales", "2,3", "--repeats", "1"]
    assert budget_frontier.main([*args, "--size", "12", "--json", str(out)]) == 0
    assert torch.is_grad_enabled()  # the tool leaves the process as it found it
    records = json.loads(out.read_text())
    assert [(r["tier"], r["scale"]) for r in records] == [
        (t, s) for s in (2.0, 3.0) for t in ("b0", "b30", "full")
    ]
    for r in records:
        assert r["images"] == 2 and r["latency_ms"] > 0 and r["psnr_y"] > 0
        if r["tier"] == "full":
            assert r["latency_vs_richest"] == 1.0 and r["db_below_richest"] == 0.0
    for scale in (2.0, 3.0):
        macs = [r["macs"] for r in records if r["scale"] == scale]
        assert macs == sorted(macs) and macs[0] < macs[-1]
    with pytest.raises(SystemExit) as refused:
        budget_frontier.main(["--budgets", "1.5", "--data", str(folder)])
    assert refused.value.code == 2


@torch.no_grad()
@pytest.mark.parametrize("method", ["ssrno", "anysr"])
def test_product_bound_runs_every_product_the_decoder_counts(method) -> None:
    """The products alone, counted: the lift table over each piece's band, and per query each
    block's k/v and FFN products and the head's two, at the tier's widths."""
    model = registry.build(method).eval()
    lr_size, out_size = (11, 14), (29, 37)
    queries = out_size[0] * out_size[1]
    for tier in (model.tiers()[0], model.tiers()[-1]):
        widths = model.decoder_widths(tier.knob)
        dec, d = model.decoder, widths.trunk
        run = product_bound.products(model, tier.knob, lr_size, out_size)
        with counting() as counter:
            run()
        band = chunked_band_pixels(out_size, lr_size, dec.lift_piece(d))
        per_query = sum(2 * d * a + 2 * d * f for a, f in zip(widths.attn, widths.ffn, strict=True))
        per_query += d * dec.fc1.out_features + dec.fc1.out_features * 3
        expected = band * 4 * model.encoder.channels * d + queries * per_query
        assert counter.get_total_flops() == 2 * expected


def test_product_bound_refuses_an_image_of_several_chunks() -> None:
    model = registry.build("ssrno").eval()
    knob = model.tiers()[-1].knob
    with pytest.raises(ValueError, match="several chunks"):
        product_bound.products(model, knob, (64, 64), (2048, 2048))


def test_product_bound_writes_both_shares_for_every_tier(tmp_path) -> None:
    out = tmp_path / "bound.json"
    args = ["--methods", "anysr", "--size", "12", "--repeats", "1", "--threads", "1", "--json", str(out)]
    assert product_bound.main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["tier"] for r in rows] == [t.name for t in registry.load("anysr").tiers()]
    assert all(r["decoder_fraction_of_matmul"] > 0 and r["products_fraction_of_matmul"] > 0 for r in rows)


def test_compare_benches_pairs_rounds_in_order(tmp_path, capsys) -> None:
    """Two real bench runs per side on a tiny input; each row's ratios are change / base of
    round-paired runs, rows only one side timed are left out, and unpaired runs are refused."""
    from models import compare_benches

    paths, runs = [tmp_path / f"run{i}.json" for i in range(2)], []
    for out in paths:
        args = ["--methods", "ssrno", "--scales", "2", "--size", "12", "--repeats", "1", "--threads", "1"]
        assert bench.main([*args, "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    slower = json.loads(json.dumps(runs[1]))
    for r in slower["rows"]:
        r["decode_ms"] *= 2
    slower["rows"] = slower["rows"][1:]  # the change no longer times its first row
    ratios = compare_benches.paired_ratios([runs[0], runs[1]], [runs[1], slower], "decode_ms")
    first = next(iter(compare_benches.times(runs[0], "decode_ms")))
    assert ratios[first] == [pytest.approx(runs[1]["rows"][0]["decode_ms"] / runs[0]["rows"][0]["decode_ms"])]
    for row, got in ratios.items():
        if row != first:
            assert got[1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="pair them"):
        compare_benches.paired_ratios(runs, runs[:1], "decode_ms")
    assert compare_benches.main(["--base", str(paths[0]), "--change", str(paths[1])]) == 0
    assert "ssrno" in capsys.readouterr().out
