"""Pure pieces of the service: output sizing, settings, the latency model, decoding and encoding."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from service_support import image_bytes

from service.errors import InvalidParameter, PayloadTooLarge, UndecodableImage, UnsupportedMediaType
from service.imaging import Encoding, check_media_type, decode, encode, to_tensor
from service.latency import LatencyModel, prior_from_manifest
from service.metrics import Metrics
from service.settings import Policy, Settings
from service.sizing import ExecutionMode, OutputSize, ScaleRequest, execution_mode, resolve_output

# --- sizing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (ScaleRequest(scale=2), (32, 32)),
        (ScaleRequest(scale=1.5), (24, 24)),
        (ScaleRequest(scale=30), (480, 480)),
        (ScaleRequest(scale_x=2.5, scale_y=1.5), (24, 40)),
        (ScaleRequest(width=40), (40, 40)),
        (ScaleRequest(height=20), (20, 20)),
        (ScaleRequest(width=40, height=24), (24, 40)),
    ],
)
def test_output_sizes(request_: ScaleRequest, expected: tuple[int, int]) -> None:
    out = resolve_output(16, 16, request_, max_scale=30)
    assert (out.height, out.width) == expected
    assert out.scale_y == expected[0] / 16 and out.scale_x == expected[1] / 16


def test_rounding_is_half_up() -> None:
    out = resolve_output(15, 15, ScaleRequest(scale=1.5), 30)  # 22.5 -> 23, not Python's 22
    assert (out.height, out.width) == (23, 23)


def test_asymmetric_scale_predicts_quality_at_the_geometric_mean() -> None:
    out = OutputSize(height=20, width=80, scale_y=2.0, scale_x=8.0)
    assert out.scale == pytest.approx(4.0)


def test_predicted_psnr_compares_methods_by_gain_when_their_subsets_differ() -> None:
    """Two methods with equal gains on Set14 subsets of different difficulty predict the same."""
    from models.manifest import predicted_psnr_db

    def manifest(set14_bicubic: float) -> dict:
        return {
            "method": "m",
            "bicubic_psnr_y": {"set5": {"2": 33.0, "4": 28.0}, "set14": {"2": set14_bicubic, "4": 24.0}},
            "tiers": [
                {
                    "name": "t",
                    "psnr_y": {
                        "set5": {"2": 35.0, "4": 29.0},
                        "set14": {"2": set14_bicubic + 1.0, "4": 25.0},
                    },
                }
            ],
        }

    easy, hard = manifest(30.0), manifest(26.0)
    assert predicted_psnr_db(easy, "t", 2.0) == pytest.approx(33.0 + (2.0 + 1.0) / 2)
    assert predicted_psnr_db(hard, "t", 2.0) == pytest.approx(predicted_psnr_db(easy, "t", 2.0))
    assert predicted_psnr_db(hard, "t", 4.0) == pytest.approx(28.0 + 1.0)
    assert 29.0 < predicted_psnr_db(hard, "t", 3.0) < 34.5  # log-scale interpolation between


@pytest.mark.parametrize(
    "request_",
    [
        ScaleRequest(),
        ScaleRequest(scale=math.nan),
        ScaleRequest(scale=math.inf),
        ScaleRequest(scale=-2),
        ScaleRequest(scale=1.0),
        ScaleRequest(scale=0.5),
        ScaleRequest(scale=30.5),
        ScaleRequest(scale=2, width=40),
        ScaleRequest(scale=2, scale_x=2),
        ScaleRequest(scale_x=2),
        ScaleRequest(scale_x=2, scale_y=1),
        ScaleRequest(width=16),
        ScaleRequest(width=0),
        ScaleRequest(width=-5, height=40),
        ScaleRequest(width=16 * 31),
    ],
)
def test_bad_scales_are_422(request_: ScaleRequest) -> None:
    with pytest.raises(InvalidParameter) as info:
        resolve_output(16, 16, request_, max_scale=30)
    assert info.value.status == 422


def test_outputs_are_sync_then_queued_then_413() -> None:
    out = resolve_output(100, 100, ScaleRequest(scale=10), 30)  # 1 000 000 pixels
    assert execution_mode(out, 1_000_000, 2_000_000) is ExecutionMode.SYNC
    assert execution_mode(out, 1_000_000, 2_000_000, requested_async=True) is ExecutionMode.QUEUED
    assert execution_mode(out, 999_999, 1_000_000) is ExecutionMode.QUEUED
    with pytest.raises(PayloadTooLarge) as info:
        execution_mode(out, 999_999, 999_999)
    assert info.value.code == "output_too_large"


# --- settings ----------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTICSR_METHODS", "ssrno, clit")
    monkeypatch.setenv("ELASTICSR_POLICY", "static:ssrno:XS")
    monkeypatch.setenv("ELASTICSR_MAX_SCALE", "8")
    monkeypatch.setenv("ELASTICSR_CHECKPOINT_DIR", "")
    settings = Settings()
    assert settings.methods == ["ssrno", "clit"]
    assert settings.parsed_policy == Policy("static", "ssrno", "XS")
    assert settings.max_scale == 8.0
    assert settings.checkpoint_dir is None


@pytest.mark.parametrize("policy", ["dynamic", "static:ssrno", "static::X", "static:a:b:c"])
def test_bad_policies_are_refused(policy: str) -> None:
    with pytest.raises(ValueError):
        Settings(policy=policy)


def test_defaults_resolve_for_this_machine() -> None:
    settings = Settings()
    assert settings.parsed_policy.kind == "adaptive"
    assert settings.resolved_device() in ("cpu", "cuda")
    assert settings.resolved_workers("cpu") == 1 and settings.resolved_workers("cuda") == 2
    assert settings.resolved_threads(1) >= 1


# --- latency model -----------------------------------------------------------------------------


def test_latency_model_prior_calibration_and_learning() -> None:
    model = LatencyModel(alpha=0.5, default_seconds_per_gmac=0.2, overhead_seconds=0.0)
    key = ("ssrno", "X")
    assert model.get(key) == 0.2 and not model.calibrated(key)
    model.calibrate(key, seconds=1.0, gmacs=10.0)
    assert model.get(key) == pytest.approx(0.1) and model.calibrated(key)
    model.observe(key, seconds=2.0, gmacs=10.0)  # sample 0.2: half the log-step to the pace,
    assert model.pace == pytest.approx(2**0.5)  # an eighth more to the tier's own rate
    assert model.get(key) == pytest.approx(0.1 * 2 ** (0.5 * 1.25))
    assert model.predict(key, 10.0, contention=2.0) == pytest.approx(20 * model.get(key))


def test_latency_model_moves_every_tier_with_the_machine_but_keeps_their_order() -> None:
    """Only b0 is served during a spike and it runs 3x slower: every tier's figure follows, so a
    tier nobody ran does not start to look cheaper than the one that did; then the pace recovers."""
    model = LatencyModel(alpha=0.2, default_seconds_per_gmac=0.1, overhead_seconds=0.0)
    cheap, rich = ("moeisr", "b0"), ("moeisr", "full")
    model.calibrate(cheap, seconds=1.0, gmacs=10.0)  # 0.1 s per GMAC
    model.calibrate(rich, seconds=1.5, gmacs=10.0)  # 0.15
    for _ in range(40):
        model.observe(cheap, seconds=3.0, gmacs=10.0)
    assert model.get(cheap) == pytest.approx(0.3, rel=0.05)
    assert model.pace > 2.0  # most of the slowdown is the machine's
    assert model.get(rich) > 0.3  # still above the cheap tier, not stuck at its idle 0.15
    for _ in range(40):
        model.observe(cheap, seconds=1.0, gmacs=10.0)
    assert model.get(cheap) == pytest.approx(0.1, rel=0.05)
    assert model.get(rich) == pytest.approx(0.15, rel=0.2)


def test_latency_model_corrects_one_tiers_figure_without_moving_the_others_for_good() -> None:
    """A tier whose warm-up figure was half its real cost, observed alongside a correct one."""
    model = LatencyModel(alpha=0.2, default_seconds_per_gmac=0.1, overhead_seconds=0.0)
    right, wrong = ("a", "right"), ("a", "wrong")
    model.calibrate(right, seconds=1.0, gmacs=10.0)
    model.calibrate(wrong, seconds=1.0, gmacs=10.0)  # really costs 0.2 per GMAC
    for _ in range(200):
        model.observe(right, seconds=1.0, gmacs=10.0)
        model.observe(wrong, seconds=2.0, gmacs=10.0)
    assert model.get(right) == pytest.approx(0.1, rel=0.1)
    assert model.get(wrong) == pytest.approx(0.2, rel=0.1)


def test_latency_model_normalises_contention_and_resists_outliers() -> None:
    model = LatencyModel(alpha=1.0, default_seconds_per_gmac=0.1, overhead_seconds=0.0)
    key = ("a", "b")
    model.observe(key, seconds=2.0, gmacs=10.0, contention=2.0)  # 0.2 observed at 2x contention
    assert model.get(key) == pytest.approx(0.1)
    model.observe(key, seconds=100.0, gmacs=10.0)  # a 100x outlier moves the pace at most 4x
    assert model.pace == pytest.approx(4.0)
    before = model.get(key)
    model.observe(key, seconds=100.0, gmacs=0.01)  # tiny requests teach nothing
    assert model.get(key) == before


def test_latency_model_subtracts_the_fixed_overhead() -> None:
    model = LatencyModel(alpha=1.0, default_seconds_per_gmac=0.1, overhead_seconds=0.05)
    model.calibrate(("a", "b"), seconds=0.15, gmacs=1.0)
    assert model.get(("a", "b")) == pytest.approx(0.1)
    assert model.predict(("a", "b"), 1.0) == pytest.approx(0.15)


def test_prior_from_manifest_timing() -> None:
    manifest = {
        "method": "m",
        "tiers": [{"name": "t", "macs_per_output_pixel": {"2": 1e5}, "cpu_latency_ms": {"2": 655.36}}],
    }
    # 256x256 output pixels x 1e5 MAC = 6.5536 GMAC in 0.65536 s
    assert prior_from_manifest(manifest, "t") == pytest.approx(0.1)
    assert prior_from_manifest(manifest, "missing") is None
    assert prior_from_manifest({"method": "m", "tiers": [{"name": "t"}]}, "t") is None


# --- decoding and encoding ---------------------------------------------------------------------

ENC = Encoding()


def roundtrip(data: bytes, fmt: str | None = None, scale: int = 2) -> Image.Image:
    img = decode(data, max_pixels=10_000)
    x = to_tensor(img)
    assert x.shape[:2] == (1, 3) and x.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0
    y = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear")
    out = Image.open(io.BytesIO(encode(y, img, fmt or img.format, ENC)))
    out.load()
    return out


@pytest.mark.parametrize(
    ("mode", "fmt", "out_mode"),
    [
        ("RGB", "PNG", "RGB"),
        ("RGB", "JPEG", "RGB"),
        ("RGB", "WEBP", "RGB"),
        ("L", "PNG", "L"),
        ("L", "JPEG", "L"),
        ("1", "PNG", "L"),
        ("P", "PNG", "RGB"),
        ("I;16", "PNG", "I;16"),
        ("CMYK", "JPEG", "RGB"),
    ],
)
def test_modes_come_back_sensibly(mode: str, fmt: str, out_mode: str) -> None:
    out = roundtrip(image_bytes(6, 4, mode, fmt))
    assert out.size == (12, 8)
    assert out.mode == out_mode


def test_alpha_is_upscaled_and_reattached_or_flattened() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))  # left half transparent
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    png = roundtrip(buffer.getvalue())
    assert png.mode == "RGBA" and png.size == (16, 16)
    assert png.getpixel((1, 8))[3] == 0 and png.getpixel((14, 8))[3] == 255
    webp = roundtrip(buffer.getvalue(), "webp")
    assert webp.mode == "RGBA"
    jpeg = roundtrip(buffer.getvalue(), "jpeg")
    assert jpeg.mode == "RGB" and min(jpeg.getpixel((1, 8))) > 200  # transparent -> white


def test_grey_alpha_and_palette_transparency() -> None:
    la = roundtrip(image_bytes(4, 4, "LA", "PNG"))
    assert la.mode == "L"  # fully opaque alpha is dropped
    half = Image.new("LA", (4, 4), (100, 128))
    buffer = io.BytesIO()
    half.save(buffer, "PNG")
    assert roundtrip(buffer.getvalue()).mode == "LA"
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)  # colour 0 is transparent
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    assert roundtrip(buffer.getvalue()).mode == "RGBA"


def test_sixteen_bit_grey_keeps_its_range() -> None:
    grey = Image.fromarray(np.full((4, 4), 60000, dtype=np.uint16))
    buffer = io.BytesIO()
    grey.save(buffer, "PNG")
    img = decode(buffer.getvalue(), 1000)
    assert img.high_bit_depth and img.grey
    assert to_tensor(img).max().item() == pytest.approx(60000 / 65535, abs=1e-6)
    out = roundtrip(buffer.getvalue())
    assert abs(np.asarray(out).astype(int).mean() - 60000) < 2


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    img = decode(buffer.getvalue(), 1000)
    assert (img.height, img.width) == (8, 4)


def test_decoding_errors() -> None:
    with pytest.raises(UndecodableImage):
        decode(b"", 1000)
    with pytest.raises(UndecodableImage):
        decode(b"this is not an image at all", 1000)
    with pytest.raises(UndecodableImage):
        decode(image_bytes(32, 32)[:60], 10_000)  # truncated
    with pytest.raises(UnsupportedMediaType):
        decode(image_bytes(4, 4, "RGB", "GIF"), 1000)
    with pytest.raises(PayloadTooLarge) as info:
        decode(image_bytes(20, 10), max_pixels=199)
    assert info.value.code == "input_too_large"


@pytest.mark.parametrize("side", [6000, 20000])  # our limit; Pillow's decompression-bomb guard
def test_pixel_limit_is_checked_before_decoding(side: int) -> None:
    big = Image.new("1", (side, side))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    assert len(buffer.getvalue()) < 200_000  # a small file whose pixels are never decoded
    with pytest.raises(PayloadTooLarge) as info:
        decode(buffer.getvalue(), max_pixels=10_000_000)
    assert info.value.code == "input_too_large"


def test_media_types() -> None:
    for ok in ("image/png", "image/jpeg; charset=binary", "IMAGE/WEBP", "application/octet-stream"):
        check_media_type(ok)
    for bad in (None, "", "text/plain", "image/gif", "application/json"):
        with pytest.raises(UnsupportedMediaType):
            check_media_type(bad)


# --- documentation stays in step with the code -------------------------------------------------


def test_readme_lists_every_setting_and_metric() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`ELASTICSR_{name.upper()}`" in readme, name
    for family in Metrics().registry.collect():
        if family.name.startswith("elasticsr_"):
            suffix = "_total" if family.type == "counter" else ""
            assert f"`{family.name}{suffix}`" in readme, family.name
