"""The worker pool's bookkeeping (what the controller's backlog comes from), without models."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from service_support import caching_loader, image_bytes, make_settings, metric, served

from service.errors import Unavailable
from service.inference import InferencePool
from service.sizing import OutputSize

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_backlog_counts_queued_and_running_work() -> None:
    pool = InferencePool(workers=1, torch_threads=1)
    release = threading.Event()
    far = time.monotonic() + 60
    try:
        first, second = pool.admit(2.0, far), pool.admit(3.0, far)
        assert (pool.queued, pool.running) == (2, 0)
        assert pool.backlog_seconds() == pytest.approx(5.0)
        running = asyncio.create_task(pool.run(first, lambda: release.wait(10) and "one"))
        waiting = asyncio.create_task(pool.run(second, lambda: "two"))
        while pool.running == 0:
            await asyncio.sleep(0.01)
        assert (pool.queued, pool.running) == (1, 1)
        now = time.monotonic()
        assert 3.0 < pool.backlog_seconds(now + 0.5) <= 4.5  # running job: predicted minus elapsed
        assert pool.backlog_seconds(now + 10) == pytest.approx(3.0)  # overdue running job owes 0
        release.set()
        results = await asyncio.gather(running, waiting)
        assert [r.value for r in results] == ["one", "two"]
        assert results[1].wait_seconds >= results[0].wait_seconds
        assert (pool.queued, pool.running, pool.backlog_seconds()) == (0, 0, 0.0)
    finally:
        release.set()
        pool.shutdown()


async def test_a_request_whose_deadline_passed_in_the_queue_is_dropped() -> None:
    pool = InferencePool(workers=1, torch_threads=1)
    try:
        ticket = pool.admit(1.0, deadline_at=time.monotonic() - 0.001)
        ran = []
        with pytest.raises(Unavailable) as info:
            await pool.run(ticket, lambda: ran.append(1))
        assert info.value.code == "deadline_expired" and info.value.status == 503
        assert ran == [] and (pool.queued, pool.running) == (0, 0)
    finally:
        pool.shutdown()


async def test_a_method_failing_warm_up_is_dropped_and_the_rest_served() -> None:
    def loader(name: str, device: str, checkpoint_dir: str | None):
        model = caching_loader("ssrno", device, checkpoint_dir)
        if name == "ssrno":
            return model

        class Broken:  # loads fine, fails to run
            def __init__(self) -> None:
                self.manifest = {"method": name, "tiers": []}

            def tiers(self):
                return model.tiers()

            def upscale(self, *args, **kwargs):
                raise RuntimeError("kernel exploded")

        return Broken()

    settings = make_settings(methods=["ssrno", "anysr"], warmup=True, warmup_size=4)
    async with served(settings, loader=loader) as (app, client):
        runtime = app.state.runtime
        assert list(runtime.methods) == ["ssrno"] and "kernel exploded" in runtime.failures["anysr"]
        response = await client.post(
            "/upscale?scale=2&tier=XS", content=image_bytes(4, 4), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text


async def test_a_request_that_no_longer_fits_runs_the_fallbacks_cheaper_work() -> None:
    pool = InferencePool(workers=1, torch_threads=1)
    try:
        asked: list[float] = []

        async def fallback(left: float):
            asked.append(left)
            return 0.05, lambda: "cheap"

        fits = pool.admit(0.1, deadline_at=time.monotonic() + 60)
        assert (await pool.run(fits, lambda: "planned", fallback)).value == "planned"
        assert asked == []  # still fits: the plan stands

        late = pool.admit(5.0, deadline_at=time.monotonic() + 1.0)
        assert (await pool.run(late, lambda: "planned", fallback)).value == "cheap"
        assert len(asked) == 1 and 0.5 < asked[0] <= 1.0

        async def nothing_fits(left: float):
            return None

        hopeless = pool.admit(5.0, deadline_at=time.monotonic() + 1.0)
        with pytest.raises(Unavailable) as info:
            await pool.run(hopeless, lambda: "planned", nothing_fits)
        assert info.value.code == "deadline_expired"
        assert (pool.queued, pool.running, pool.free_slots) == (0, 0, 1)
    finally:
        pool.shutdown()


async def test_a_request_delayed_past_its_plan_is_served_by_a_cheaper_tier() -> None:
    """A worker stuck longer than predicted: the waiting request is re-planned, not answered late."""
    settings = make_settings(methods=["ssrno"], overhead_ms=0.0, contention_weight=0.0)
    async with served(settings) as (app, client):
        runtime = app.state.runtime
        candidates, _ = runtime.candidates("ssrno", None, (4, 4), OutputSize(8, 8, 2.0, 2.0))
        for c, seconds in zip(candidates, (0.02, 0.1, 0.2, 0.6, 0.9), strict=True):
            runtime.latency.set_prior(c.key, seconds / c.gmacs)  # X 0.9 s ... M 0.2 s, XS 0.02 s
        release = threading.Event()
        blocker = runtime.pool.admit(0.0, deadline_at=time.monotonic() + 60)  # predicted 0 s, takes 1 s
        stuck = asyncio.create_task(runtime.pool.run(blocker, lambda: release.wait(1.0)))
        while runtime.pool.running == 0:
            await asyncio.sleep(0.01)
        response = await client.post(
            "/upscale?scale=2&deadline_ms=1600",
            content=image_bytes(4, 4),
            headers={"content-type": "image/png"},
        )
        await stuck
        assert response.status_code == 200, response.text
        # Planned on an idle-looking pool: X (0.9 s) fit the 1.6 s budget. After the 1 s wait
        # about 0.6 s are left, where X no longer fits and M (0.2 s within the 30 % reserve) does.
        assert response.headers["x-elasticsr-tier"] == "M"
        text = (await client.get("/metrics")).text
        assert metric(text, "elasticsr_late_downgrades_total", method="ssrno", tier="M") == 1
        assert metric(text, "elasticsr_tier_choices_total", method="ssrno", tier="X") == 1


async def test_the_pool_learns_how_much_longer_than_predicted_requests_wait_and_run() -> None:
    pool = InferencePool(workers=1, torch_threads=1, deviations=2.0)
    far = time.monotonic() + 60
    try:
        quick = pool.admit(0.0, far, predicted_wait=0.01)  # too short a wait and compute to learn from
        await pool.run(quick, lambda: None)
        assert (pool.wait_error.samples, pool.compute_error.samples) == (0, 0)
        assert pool.wait_correction == pool.compute_margin == 1.0
        late = pool.admit(0.05, far, predicted_wait=0.1)
        await asyncio.sleep(0.3)  # waits 3× longer than predicted, computes 4× longer
        await pool.run(late, lambda: time.sleep(0.2))
        assert pool.wait_error.samples == pool.compute_error.samples == 1
        assert pool.wait_error.mean > 1.2 and pool.wait_correction > pool.wait_error.mean  # + spread
        assert pool.compute_margin > 1.5
    finally:
        pool.shutdown()
