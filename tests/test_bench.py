"""models.bench on a tiny input: the table's JSON has every tier, and each decoder fraction is
taken against the matmul timed beside it (checked by recomputing it from the recorded times)."""

import json

from models import bench


def test_bench_writes_every_tier_with_side_by_side_peak(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["--methods", "moeisr", "--scales", "2", "--size", "12", "--repeats", "1", "--threads", "1"]
    assert bench.main([*args, "--gemm-widths", "16,64", "--gemm-shapes", "64x4x32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["tier"] for r in rows] == ["b0", "b25", "b45", "b70", "full"]
    for r in rows:
        assert r["matmul_gflops_beside"] > 0 and r["latency_ms"] > 0 and r["encode_ms"] > 0
        # One repeat: the fraction is that timing's decoder GFLOP/s over the matmul beside it.
        assert abs(r["decoder_fraction_of_matmul"] - r["decoder_gflops"] / r["matmul_gflops_beside"]) < 1e-9
    assert set(result["cheapest_over_richest_latency"]) == {"moeisr x2"}
    shapes = [(g["rows"], g["k"], g["n"]) for g in result["bare_gemms"]]
    assert shapes == [(4096, 16, 16), (4096, 64, 64), (64, 4, 32)]
    assert all(g["fraction_of_matmul"] > 0 for g in result["bare_gemms"])
