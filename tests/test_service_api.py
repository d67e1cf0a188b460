"""The real app over ASGI (httpx): sizes, formats, every error, and the controller under load.

Load is simulated by overriding the load-probe dependency with a synthetic snapshot and by setting
the latency model, never by timing, so the assertions hold on a noisy machine.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from service_support import checkpoint_dir, decoded, image_bytes, make_settings, metric, served

from service.api.deps import get_load_probe
from service.load import LoadSnapshot
from service.sizing import OutputSize

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}
CHEAP = "method=ssrno&tier=XS"  # pinned cheapest tier: fastest inference for tests about plumbing


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(anyio_backend: str):
    async with served() as (_, client):
        yield client


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert body["message"]
    return body


# --- sizes and formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "size"),
    [
        ("scale=2", (16, 16)),  # integer
        ("scale=1.5", (12, 12)),  # non-integer
        ("scale=2.75", (22, 22)),
        ("scale_x=2.5&scale_y=1.5", (20, 12)),  # asymmetric (width, height)
        ("width=20&height=11", (20, 11)),  # target size
        ("width=12", (12, 12)),  # one side keeps the aspect ratio
    ],
)
async def test_output_size(client: httpx.AsyncClient, query: str, size: tuple[int, int]) -> None:
    response = await client.post(f"/upscale?{query}&{CHEAP}", content=image_bytes(8, 8), headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert decoded(response.content).size == size
    assert response.headers["x-elasticsr-output-size"] == f"{size[0]}x{size[1]}"
    assert response.headers["x-elasticsr-method"] == "ssrno"
    assert response.headers["x-elasticsr-tier"] == "XS"
    assert float(response.headers["x-elasticsr-predicted-psnr"]) > 0
    timing = response.headers["server-timing"]
    assert "queue;dur=" in timing and "compute;dur=" in timing


async def test_adaptive_request_reports_its_choice(client: httpx.AsyncClient) -> None:
    response = await client.post("/upscale?scale=2", content=image_bytes(8, 8), headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["x-elasticsr-policy"] == "adaptive"
    assert response.headers["x-elasticsr-method"] in ("ssrno", "anysr")
    assert response.headers["x-elasticsr-scale"] == "2x2"


async def test_multipart_upload(client: httpx.AsyncClient) -> None:
    files = {"file": ("in.png", image_bytes(8, 6), "image/png")}
    response = await client.post(f"/upscale?scale=2&{CHEAP}", files=files)
    assert response.status_code == 200, response.text
    assert decoded(response.content).size == (16, 12)


@pytest.mark.parametrize(
    ("mode", "fmt", "media", "out_format", "out_mode"),
    [
        ("RGB", "JPEG", "image/jpeg", "JPEG", "RGB"),
        ("RGB", "WEBP", "image/webp", "WEBP", "RGB"),
        ("L", "PNG", "image/png", "PNG", "L"),
        ("P", "PNG", "image/png", "PNG", "RGB"),
        ("RGBA", "PNG", "image/png", "PNG", "RGBA"),
        ("I;16", "PNG", "image/png", "PNG", "I;16"),
        ("RGB", "PNG", "application/octet-stream", "PNG", "RGB"),
    ],
)
async def test_input_formats_and_modes(
    client: httpx.AsyncClient, mode: str, fmt: str, media: str, out_format: str, out_mode: str
) -> None:
    data = image_bytes(6, 6, mode, fmt)
    if mode == "RGBA":  # make the alpha non-trivial
        image = decoded(data).copy()
        image.putalpha(128)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        data = buffer.getvalue()
    response = await client.post(f"/upscale?scale=2&{CHEAP}", content=data, headers={"content-type": media})
    assert response.status_code == 200, response.text
    out = decoded(response.content)
    assert (out.format, out.mode, out.size) == (out_format, out_mode, (12, 12))


@pytest.mark.parametrize(
    ("fmt", "media"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]
)
async def test_output_format_parameter(client: httpx.AsyncClient, fmt: str, media: str) -> None:
    data = image_bytes(6, 6, "RGB", "JPEG")
    response = await client.post(f"/upscale?scale=2&format={fmt}&{CHEAP}", content=data, headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media
    assert decoded(response.content).format == fmt.upper()


async def test_exif_rotated_input_is_served_upright(client: httpx.AsyncClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise on display
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4), (200, 10, 10)).save(buffer, "JPEG", exif=exif.tobytes())
    response = await client.post(
        f"/upscale?scale=2&{CHEAP}", content=buffer.getvalue(), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    assert decoded(response.content).size == (8, 16)


# --- errors ------------------------------------------------------------------------------------


async def test_undecodable_bodies_are_400(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post("/upscale?scale=2", content=b"not an image", headers=PNG), 400, "undecodable_image"
    )
    truncated = image_bytes(32, 32)[:80]
    assert_error(
        await client.post("/upscale?scale=2", content=truncated, headers=PNG), 400, "undecodable_image"
    )
    assert_error(await client.post("/upscale?scale=2", content=b"", headers=PNG), 400, "undecodable_image")
    bad_multipart = {"content-type": "multipart/form-data"}  # no boundary
    response = await client.post("/upscale?scale=2", content=b"--x\r\n", headers=bad_multipart)
    assert_error(response, 400, "malformed_multipart")


async def test_unsupported_types_are_415(client: httpx.AsyncClient) -> None:
    gif = image_bytes(4, 4, "RGB", "GIF")
    for body, media in [
        (b"hello", "text/plain"),
        (gif, "image/gif"),
        (gif, "image/png"),  # lies about its type: the bytes decide
        (image_bytes(4, 4), ""),
    ]:
        response = await client.post("/upscale?scale=2", content=body, headers={"content-type": media})
        assert_error(response, 415, "unsupported_media_type")
    files = {"file": ("in.txt", b"hello", "text/plain")}
    assert_error(await client.post("/upscale?scale=2", files=files), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "query",
    [
        "",
        "scale=nan",
        "scale=inf",
        "scale=-inf",
        "scale=-2",
        "scale=0",
        "scale=1",
        "scale=30.01",
        "scale=abc",
        "scale=2&width=20",
        "scale_x=2",
        "width=abc",
        "scale=2&method=bogus",
        "scale=2&method=ssrno&tier=bogus",
        "scale=2&tier=bogus",
        "scale=2&format=bmp",
        "scale=2&deadline_ms=0",
        "scale=2&deadline_ms=-5",
        "scale=2&deadline_ms=nan",
        "scale=2&deadline_ms=1e12",
        "scale=2&min_quality=nan",
    ],
)
async def test_bad_parameters_are_422(client: httpx.AsyncClient, query: str) -> None:
    response = await client.post(f"/upscale?{query}", content=image_bytes(8, 8), headers=PNG)
    assert_error(response, 422, "invalid_parameter")


async def test_unsatisfiable_requests_are_422_with_their_own_codes(client: httpx.AsyncClient) -> None:
    body = image_bytes(8, 8)
    response = await client.post("/upscale?scale=2&min_quality=60", content=body, headers=PNG)
    assert_error(response, 422, "quality_unreachable")
    response = await client.post("/upscale?scale=2&deadline_ms=1", content=body, headers=PNG)
    assert_error(response, 422, "deadline_unachievable")
    files = {"other": ("in.png", body, "image/png")}
    assert_error(await client.post("/upscale?scale=2", files=files), 422, "missing_file")


async def test_size_limits_are_413() -> None:
    settings = make_settings(
        max_body_bytes=3000,
        max_input_pixels=20 * 20,
        max_output_pixels=40 * 40,
        max_job_output_pixels=40 * 40,
    )
    async with served(settings) as (_, client):
        big_body = image_bytes(40, 40)  # ~5 KB of noise
        assert len(big_body) > 3000
        assert_error(
            await client.post("/upscale?scale=2", content=big_body, headers=PNG), 413, "payload_too_large"
        )
        files = {"file": ("in.png", big_body, "image/png")}
        assert_error(await client.post("/upscale?scale=2", files=files), 413, "payload_too_large")
        many_pixels = image_bytes(30, 30, "L")  # compresses below the byte limit
        assert len(many_pixels) <= 3000
        response = await client.post("/upscale?scale=2", content=many_pixels, headers=PNG)
        assert_error(response, 413, "input_too_large")
        response = await client.post("/upscale?scale=2.5", content=image_bytes(20, 20, "L"), headers=PNG)
        assert_error(response, 413, "output_too_large")


async def test_unknown_routes_and_methods_answer_json(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "not_found")
    assert_error(await client.get("/upscale"), 405, "method_not_allowed")


# --- the controller through the API ------------------------------------------------------------


def inject_load(app: FastAPI, snapshot: LoadSnapshot) -> None:
    app.dependency_overrides[get_load_probe] = lambda: lambda: snapshot


async def test_controller_degrades_under_load_and_climbs_back() -> None:
    # No contention term: the idle request must see an idle machine even while other jobs load the CPU.
    async with served(make_settings(methods=["ssrno"], contention_weight=0.0)) as (app, client):
        runtime = app.state.runtime
        # A slow machine on paper: seconds of predicted compute per tier, gaps of seconds between tiers.
        for t in runtime.methods["ssrno"].tiers:
            runtime.latency.set_prior(("ssrno", t.name), 100.0)
        body, query = image_bytes(8, 8), "/upscale?scale=2&deadline_ms=60000"

        idle = await client.post(query, content=body, headers=PNG)
        assert idle.status_code == 200, idle.text
        assert idle.headers["x-elasticsr-tier"] == "X"  # richest when idle

        candidates, _ = runtime.candidates("ssrno", None, (8, 8), OutputSize(16, 16, 2.0, 2.0))
        cost = {c.tier: runtime.config.overhead_seconds + c.gmacs * c.seconds_per_gmac for c in candidates}
        assert cost["XS"] < cost["S"] < cost["X"]
        # Backlog such that only XS still fits in the 60 s deadline.
        backlog = 60.0 - (cost["XS"] + cost["S"]) / 2
        inject_load(app, LoadSnapshot(workers=1, running=1, queued=3, backlog_seconds=backlog))
        loaded = await client.post(query, content=body, headers=PNG)
        assert loaded.status_code == 200, loaded.text
        assert loaded.headers["x-elasticsr-tier"] == "XS"
        assert float(loaded.headers["x-elasticsr-predicted-psnr"]) < float(
            idle.headers["x-elasticsr-predicted-psnr"]
        )

        # A pinned tier is never degraded: under this load it is shed instead.
        pinned = await client.post(query + "&tier=X", content=body, headers=PNG)
        assert_error(pinned, 503, "overloaded")

        # More load than even XS can absorb: 503 with Retry-After.
        inject_load(app, LoadSnapshot(workers=1, running=1, queued=3, backlog_seconds=500.0))
        shed = await client.post(query, content=body, headers=PNG)
        body_json = assert_error(shed, 503, "overloaded")
        assert body_json["detail"]["reason"] == "deadline"
        assert int(shed.headers["retry-after"]) >= 400

        # Load gone: back to the richest tier.
        inject_load(app, LoadSnapshot(workers=1))
        back = await client.post(query, content=body, headers=PNG)
        assert back.headers["x-elasticsr-tier"] == "X"


async def test_arrival_rate_moves_requests_to_the_cheapest_tier_and_is_measured() -> None:
    """An idle pool but a demand the richer tiers cannot sustain: XS, with the deadline to spare."""
    async with served(make_settings(methods=["ssrno"], contention_weight=0.0)) as (app, client):
        runtime = app.state.runtime
        body, query = image_bytes(8, 8), "/upscale?scale=2&deadline_ms=60000"
        assert runtime.snapshot().demand == 0.0
        first = await client.post(query, content=body, headers=PNG)
        assert first.headers["x-elasticsr-tier"] == "X", first.text
        assert runtime.snapshot().demand > 0.0  # that request's cheapest compute, over the window

        inject_load(app, LoadSnapshot(workers=1, demand=runtime.config.utilization_target))
        spike = await client.post(query, content=body, headers=PNG)
        assert spike.status_code == 200, spike.text
        assert spike.headers["x-elasticsr-tier"] == "XS"
        pinned = await client.post(query + "&tier=X", content=body, headers=PNG)
        assert pinned.headers["x-elasticsr-tier"] == "X"  # a pinned tier is the client's choice

        inject_load(app, LoadSnapshot(workers=1, demand=runtime.config.utilization_target / 100))
        calm = await client.post(query, content=body, headers=PNG)
        assert calm.headers["x-elasticsr-tier"] == "X"
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "elasticsr_demand_ratio") >= 0.0


async def test_full_queue_is_shed() -> None:
    async with served(make_settings(methods=["ssrno"], max_queue=2)) as (app, client):
        inject_load(app, LoadSnapshot(workers=1, running=1, queued=2, max_queue=2, backlog_seconds=1.0))
        response = await client.post("/upscale?scale=2", content=image_bytes(8, 8), headers=PNG)
        assert_error(response, 503, "overloaded")
        assert response.json()["detail"]["reason"] == "queue_full"
        assert "retry-after" in response.headers


async def test_static_policy_serves_one_tier() -> None:
    settings = make_settings(policy="static:anysr:auto", methods=[])
    async with served(settings) as (app, client):
        assert list(app.state.runtime.methods) == ["anysr"]  # only what the policy needs is loaded
        response = await client.post("/upscale?scale=2", content=image_bytes(8, 8), headers=PNG)
        assert response.status_code == 200, response.text
        assert response.headers["x-elasticsr-policy"] == "static:anysr:auto"
        # auto = AnySR's own subnet for the scale group of x2 (width 0.7)
        assert (response.headers["x-elasticsr-method"], response.headers["x-elasticsr-tier"]) == (
            "anysr",
            "w0.7",
        )
        conflicting = await client.post(
            "/upscale?scale=2&method=ssrno", content=image_bytes(8, 8), headers=PNG
        )
        assert_error(conflicting, 422, "invalid_parameter")


async def test_concurrent_requests_all_complete() -> None:
    async with served(make_settings(methods=["ssrno"])) as (app, client):
        body = image_bytes(8, 8)
        responses = await asyncio.gather(
            *(client.post(f"/upscale?scale=2&{CHEAP}", content=body, headers=PNG) for _ in range(4))
        )
        assert [r.status_code for r in responses] == [200] * 4
        assert app.state.runtime.pool.queued == 0 and app.state.runtime.inflight == 0


# --- start-up, readiness, models ---------------------------------------------------------------


async def test_no_checkpoints_still_starts_and_says_why(tmp_path: Path) -> None:
    async with served(make_settings(checkpoint_dir=tmp_path)) as (_, client):
        assert (await client.get("/healthz")).status_code == 200
        ready = assert_error(await client.get("/readyz"), 503, "not_ready")
        assert "no manifest" in ready["message"]
        response = await client.post("/upscale?scale=2", content=image_bytes(8, 8), headers=PNG)
        assert_error(response, 503, "no_model_available")
        assert "retry-after" in response.headers
        models = (await client.get("/models")).json()
        assert all(not m["loaded"] and m["error"] for m in models["methods"])


async def test_some_checkpoints_serve_the_rest(tmp_path: Path) -> None:
    for name in ("ssrno", "anysr"):
        for suffix in (".json", ".safetensors"):
            shutil.copy(checkpoint_dir() / f"{name}{suffix}", tmp_path)
    with open(tmp_path / "anysr.safetensors", "r+b") as f:  # corrupt one byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    async with served(make_settings(checkpoint_dir=tmp_path)) as (_, client):
        ready = (await client.get("/readyz")).json()
        assert ready["methods"] == ["ssrno"] and "corrupt" in ready["failed"]["anysr"]
        response = await client.post("/upscale?scale=2&method=anysr", content=image_bytes(8, 8), headers=PNG)
        assert_error(response, 503, "no_model_available")
        response = await client.post("/upscale?scale=2", content=image_bytes(8, 8), headers=PNG)
        assert response.status_code == 200 and response.headers["x-elasticsr-method"] == "ssrno"


async def test_warm_up_calibrates_every_tier_before_ready() -> None:
    settings = make_settings(methods=["ssrno"], warmup=True, warmup_size=8)
    async with served(settings) as (_, client):
        assert (await client.get("/readyz")).status_code == 200
        models = (await client.get("/models")).json()
        tiers = models["methods"][0]["tiers"]
        assert [t["name"] for t in tiers] == ["XS", "S", "M", "L", "X"]
        assert all(t["calibrated"] and t["seconds_per_gmac"] > 0 for t in tiers)


async def test_models_lists_tiers_with_measured_quality_and_cost(client: httpx.AsyncClient) -> None:
    body = (await client.get("/models")).json()
    assert body["policy"] == "adaptive" and body["device"] == "cpu" and body["state"] == "ready"
    methods = {m["name"]: m for m in body["methods"]}
    assert set(methods) == {"ssrno", "anysr"}
    tier = methods["anysr"]["tiers"][0]
    assert tier["name"] == "w0.5" and tier["index"] == 0 and tier["params"] > 0
    assert tier["psnr_y"]["Set5"]["2"] > methods["anysr"]["bicubic_psnr_y"]["Set5"]["2"]
    assert tier["macs_per_output_pixel"]["2"] > 0 and tier["cpu_latency_ms"]["2"] > 0
    assert methods["anysr"]["sha256"]


async def test_openapi_documents_the_api(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    upscale = schema["paths"]["/upscale"]["post"]
    params = {p["name"] for p in upscale["parameters"]}
    assert {"scale", "scale_x", "scale_y", "width", "height", "method", "tier", "deadline_ms"} <= params
    assert {"min_quality", "format"} <= params
    assert {"image/png", "image/jpeg", "image/webp", "multipart/form-data"} <= set(
        upscale["requestBody"]["content"]
    )
    assert {"400", "413", "415", "422", "503"} <= set(upscale["responses"])
    assert {"/models", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
