"""Checkpoint export/verification, the evaluation protocol and resumable training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from models import average, combine_evals, evaluate, export, lineage, registry, train
from models.checkpoint import CheckpointError, export_weights, load_model, write_manifest
from models.quality import crop_for_scale, psnr_y, y_channel
from models.sampling import PatchSampler


def _export(tmp_path, name="anysr"):
    model = registry.build(name).eval()
    sha = export_weights(model, tmp_path / f"{name}.safetensors")
    write_manifest({"method": name, "file": f"{name}.safetensors", "sha256": sha, "tiers": []}, tmp_path)
    return model


def test_exported_checkpoint_loads_and_matches(tmp_path) -> None:
    model = _export(tmp_path)
    loaded = load_model("anysr", torch.device("cpu"), tmp_path)
    lr = torch.rand(1, 3, 9, 10)
    # float16 storage: the loaded model differs from the float32 original only by rounding.
    assert torch.allclose(model.upscale(lr, (20, 17)), loaded.upscale(lr, (20, 17)), atol=2e-2)
    assert loaded.manifest["method"] == "anysr"


def test_corrupt_or_missing_checkpoint_is_refused_clearly(tmp_path) -> None:
    _export(tmp_path)
    path = tmp_path / "anysr.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model("anysr", torch.device("cpu"), tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_model("anysr", torch.device("cpu"), tmp_path)
    with pytest.raises(CheckpointError, match="no manifest"):
        load_model("clit", torch.device("cpu"), tmp_path)


def test_psnr_protocol() -> None:
    rng = np.random.default_rng(0)
    hr = Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8), "RGB")
    cropped, lr_size = crop_for_scale(hr, 3)
    assert cropped.size == (48, 36) and lr_size == (16, 12)
    cropped, lr_size = crop_for_scale(hr, 2.5)
    assert lr_size == (20, 14) and cropped.size == (50, 35)
    assert math.isinf(psnr_y(hr, hr, 2))
    # Y of pure white is 235/255 in the BT.601 studio range.
    white = Image.new("RGB", (4, 4), (255, 255, 255))
    assert np.allclose(y_channel(white), 235 / 255)
    darker = Image.fromarray((np.asarray(hr) // 2).astype(np.uint8))
    assert 0 < psnr_y(darker, hr, 2) < 20


def _image_folder(path, n=3, size=(72, 80)):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        smooth = rng.normal(size=(size[0] // 8, size[1] // 8, 3))
        img = Image.fromarray(((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8))
        img.resize(size[::-1], Image.BICUBIC).save(path / f"{i}.png")
    return path


def test_training_runs_saves_and_resumes(tmp_path) -> None:
    data = _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    args = ["--method", "clit", "--data", str(data), "--out", str(out), "--log-every", "1"]
    args += ["--threads", "2", "--batch", "2", "--patch", "12", "--queries", "64"]
    assert train.main([*args, "--steps", "2"]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["train"])
    assert meta["step"] == 2 and meta["images"] == 3
    assert meta["code"] == train.code_version()  # which sampling rules trained it (None without git)
    first = (out / "model.safetensors").read_bytes()
    assert train.main([*args, "--steps", "3", "--resume"]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["train"])["step"] == 3
    assert (out / "model.safetensors").read_bytes() != first
    assert (out / "optim.safetensors").is_file()


def test_run_from_a_shipped_checkpoint_keeps_its_lineage(tmp_path) -> None:
    """Run folders do not outlive a session: a run started from a shipped checkpoint takes the
    earlier chain from that checkpoint's manifest, so the new manifest still says how it was made.
    The chain is taken when the run starts: shipping another run at the init path before this one
    is exported (or resumed) must not make that run its parent."""
    data = _image_folder(tmp_path / "imgs")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    _export(shipped, "clit")
    earlier = {"steps": 77, "hardware": "cpu", "initialised_from": {"steps": 5}}
    manifest = json.loads((shipped / "clit.json").read_text()) | {"training": earlier}
    (shipped / "clit.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    args = ["--method", "clit", "--data", str(data), "--out", str(out), "--threads", "2"]
    args += ["--batch", "2", "--patch", "12", "--queries", "64", "--steps", "1"]
    assert train.main([*args, "--init", str(shipped / "clit.safetensors")]) == 0
    record = lineage.training_record(out)
    assert record["steps"] == 1
    assert record["initialised_from"] == earlier

    descendant = manifest | {"training": {"steps": 99, "initialised_from": earlier}}
    (shipped / "clit.json").write_text(json.dumps(descendant))
    assert train.main([*args[:-1], "2", "--init", str(shipped / "clit.safetensors"), "--resume"]) == 0
    record = lineage.training_record(out)
    assert record["steps"] == 2
    assert record["initialised_from"] == earlier


def test_each_run_of_a_chain_draws_new_samples(tmp_path) -> None:
    """A run started from another run's weights takes the next seed by default (so it sees new
    crops, not its parent's again), keeps it when resumed and records it; --seed overrides."""
    data = _image_folder(tmp_path / "imgs")
    args = ["--method", "clit", "--data", str(data), "--threads", "2"]
    args += ["--batch", "2", "--patch", "12", "--queries", "64", "--steps", "1"]
    assert train.main([*args, "--out", str(tmp_path / "a")]) == 0
    init = ["--init", str(tmp_path / "a" / "model.safetensors")]
    assert train.main([*args, "--out", str(tmp_path / "b"), *init]) == 0
    assert lineage.run_metadata(tmp_path / "a")["seed"] == 0
    assert lineage.training_record(tmp_path / "b")["seed"] == 1
    assert lineage.chain_length(lineage.training_record(tmp_path / "b")) == 2
    assert train.main([*args[:-1], "2", "--out", str(tmp_path / "b"), "--resume"]) == 0
    assert lineage.run_metadata(tmp_path / "b")["seed"] == 1
    assert train.main([*args, "--out", str(tmp_path / "c"), "--seed", "7"]) == 0
    assert lineage.run_metadata(tmp_path / "c")["seed"] == 7


def test_average_of_runs_is_a_run_with_both_parents(tmp_path) -> None:
    """models.average writes the tensor-wise mean as a run folder whose lineage names every
    averaged run; a run continued from it counts the longer chain, and runs of another method
    or shape are refused."""
    data = _image_folder(tmp_path / "imgs")
    args = ["--method", "clit", "--data", str(data), "--threads", "2"]
    args += ["--batch", "2", "--patch", "12", "--queries", "64", "--steps", "1"]
    assert train.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert (
        train.main([*args, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a" / "model.safetensors")])
        == 0
    )
    assert train.main([*args, "--out", str(tmp_path / "c"), "--seed", "3"]) == 0
    runs = [tmp_path / "b", tmp_path / "c"]
    assert average.main(["--method", "clit", "--runs", *map(str, runs), "--out", str(tmp_path / "soup")]) == 0

    soup = load_file(str(tmp_path / "soup" / "model.safetensors"))
    b, c = (load_file(str(run / "model.safetensors")) for run in runs)
    assert soup.keys() == b.keys()
    assert all(torch.allclose(soup[k], (b[k] + c[k]) / 2) for k in soup)
    assert any(not torch.equal(soup[k], b[k]) for k in soup)
    record = lineage.training_record(tmp_path / "soup")
    assert [parent["seed"] for parent in record["averaged_from"]] == [1, 3]
    assert lineage.chain_length(record) == 3  # a → b → soup

    init = ["--init", str(tmp_path / "soup" / "model.safetensors")]
    assert train.main([*args, "--out", str(tmp_path / "d"), *init]) == 0
    assert lineage.training_record(tmp_path / "d")["seed"] == 3
    assert lineage.training_record(tmp_path / "d")["initialised_from"] == record

    other = ["--method", "anysr", "--data", str(data), "--threads", "2", "--batch", "2", "--patch", "12"]
    assert train.main([*other, "--queries", "64", "--steps", "1", "--out", str(tmp_path / "e")]) == 0
    with pytest.raises(SystemExit):
        average.main(
            [
                "--method",
                "clit",
                "--runs",
                str(tmp_path / "b"),
                str(tmp_path / "e"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
    with pytest.raises(ValueError, match="same tensors"):
        average.average_weights([tmp_path / "b", tmp_path / "e"])


def test_sampler_state_resumes_both_crops_and_query_pixels() -> None:
    images = [torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8) for _ in range(2)]
    first = PatchSampler(images, patch=8, queries=16, batch=2, seed=3)
    first.sample()
    state = json.loads(json.dumps(first.state()))  # as it travels in the run's metadata
    expected = first.sample()
    resumed = PatchSampler(images, patch=8, queries=16, batch=2, seed=3)
    resumed.set_state(state)
    again = resumed.sample()
    assert torch.equal(again.lr, expected.lr) and torch.equal(again.coord, expected.coord)
    other = PatchSampler(images, patch=8, queries=16, batch=2, seed=4).sample()
    assert not torch.equal(other.coord, PatchSampler(images, 8, 16, 2, seed=3).sample().coord)


def test_evaluation_shards_combine_to_the_whole_folder(tmp_path) -> None:
    """Images 0–1 and 2–4 evaluated apart and combined give the whole folder's record; pieces
    that overlap or leave a gap are refused rather than averaged."""
    data = str(_image_folder(tmp_path / "imgs", n=5, size=(24, 28)))
    model = registry.build("ssrno").eval()
    tiers = model.tiers()[:1]

    def run(limit=None, skip=0):
        return evaluate.evaluate(model, [data], [2.0], tiers, limit, torch.device("cpu"), skip)

    whole, head, tail = run(), run(limit=2), run(skip=2)
    assert (head[0]["images"], tail[0]["images"], tail[0]["first_image"]) == (2, 3, 2)
    assert head[0]["psnr_y"] != tail[0]["psnr_y"]  # the pieces differ: the weighting matters
    (joined,) = combine_evals.combine(tail + head)
    assert joined["images"] == 5 and joined["first_image"] == 0
    for key in ("psnr_y", "bicubic_psnr_y"):
        assert joined[key] == pytest.approx(whole[0][key], abs=1e-4)
    assert joined["macs"] == pytest.approx(whole[0]["macs"], rel=1e-6)
    with pytest.raises(ValueError, match="starts at image 2, not 3"):
        combine_evals.combine(run(limit=3) + tail)
    with pytest.raises(ValueError, match="starts at image 3, not 2"):
        combine_evals.combine(head + run(skip=3))
    out = tmp_path / "joined.json"
    parts = [tmp_path / "head.json", tmp_path / "tail.json"]
    evaluate.write_records(str(parts[0]), head)
    evaluate.write_records(str(parts[1]), tail)
    assert combine_evals.main([*map(str, parts), "--json", str(out)]) == 0
    assert json.loads(out.read_text()) == [joined]
    manifest = {"method": "ssrno", "tiers": [{"name": tiers[0].name, "psnr_y": {}}], "bicubic_psnr_y": {}}
    with pytest.raises(ValueError, match="starts at image 2"):
        export.merge_eval(manifest, tail)  # a piece alone is not the set
    export.merge_eval(manifest, [joined])
    assert manifest["tiers"][0]["eval_images"] == {"imgs": {"2": 5}}


def test_evaluate_reads_any_folder_of_png_and_jpeg_rgb_or_greyscale(tmp_path) -> None:
    folder = tmp_path / "hr"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    smooth = rng.normal(size=(5, 4, 3))
    rgb = Image.fromarray(((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8))
    rgb = rgb.resize((26, 31), Image.BICUBIC)
    rgb.save(folder / "a.png")
    rgb.save(folder / "b.JPG", quality=95)
    rgb.convert("L").save(folder / "sub" / "c.png")
    rgb.convert("L").save(folder / "d.jpeg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "eval.json"
    args = ["--method", "ssrno", "--tiers", "XS", "--data", str(folder), "--scales", "2,3"]
    assert evaluate.main([*args, "--threads", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["tier"], r["scale"], r["images"], r["dataset"]) for r in records] == [
        ("XS", 2.0, 4, "hr"),
        ("XS", 3.0, 4, "hr"),
    ]
    for r in records:
        assert r["method"] == "ssrno" and r["seconds"] > 0 and r["macs"] > 0
        assert 10 < r["psnr_y"] < 100 and 10 < r["bicubic_psnr_y"] < 100
