"""The load-test harness: open-loop arrivals, request mix, and the numbers it reports.

The real comparison (`python -m loadtests.compare`) is a measurement, not a test; these check the
parts whose mistakes would silently bend it, on synthetic data and a fake server.
"""

from __future__ import annotations

import asyncio
import io
import math
import time

import numpy as np
import pytest
from PIL import Image

from loadtests.generator import Outcome, Record, check_loopback, classify, run_closed_loop, run_open_loop
from loadtests.metrics import check_targets, paired_delta, percentile, summarize, summarize_level
from loadtests.workload import Level, build_mix, profile, schedule


class SlowServer:
    """A fake server whose every answer takes `seconds`; remembers when requests arrived."""

    def __init__(self, seconds: float, status: int = 200) -> None:
        self.seconds, self.status = seconds, status
        self.arrived: list[float] = []
        self.inflight = self.peak = 0

    async def __call__(self, spec) -> Outcome:
        self.arrived.append(time.monotonic())
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.inflight -= 1
        headers = {"x-elasticsr-method": "m", "x-elasticsr-tier": "t", "x-elasticsr-predicted-psnr": "30.5"}
        return Outcome(self.status, b"img", headers)


MIX = ["spec"]  # the fake server ignores the spec


def test_arrivals_do_not_wait_for_responses() -> None:
    # 20 arrivals at 50/s against a server that takes 1 s each: a closed loop would need 20 s.
    arrivals = schedule([Level(1.0, 50.0, 0.4)], mix_size=1)
    server = SlowServer(1.0)
    t0 = time.monotonic()
    records = asyncio.run(run_open_loop(arrivals, MIX, server))
    wall = time.monotonic() - t0
    assert len(records) == len(arrivals) == 20
    assert wall < 5.0
    assert server.peak >= 15  # they were all outstanding together
    sent = np.array(server.arrived) - server.arrived[0]
    planned = np.array([a.offset for a in arrivals]) - arrivals[0].offset
    assert np.median(np.abs(sent - planned)) < 0.05  # each left on its own schedule
    # latency counts from the scheduled send, so it includes the whole 1 s answer
    assert all(r.status == "ok" and r.latency is not None and r.latency >= 0.99 for r in records)


def test_arrivals_over_the_inflight_cap_are_dropped_not_delayed() -> None:
    arrivals = schedule([Level(1.0, 100.0, 0.2)], mix_size=1)
    server = SlowServer(0.5)
    t0 = time.monotonic()
    records = asyncio.run(run_open_loop(arrivals, MIX, server, max_inflight=5))
    assert time.monotonic() - t0 < 3.0
    statuses = [r.status for r in records]
    assert statuses.count("ok") == 5 and statuses.count("dropped") == len(arrivals) - 5
    assert all(r.latency is None for r in records if r.status == "dropped")


def test_a_failing_exchange_is_an_error_record_and_the_run_goes_on() -> None:
    async def broken(spec) -> Outcome:
        raise ConnectionResetError

    records = asyncio.run(run_open_loop(schedule([Level(1, 20.0, 0.1)], 1), MIX, broken))
    assert [r.status for r in records] == ["error", "error"]


def test_closed_loop_keeps_exactly_its_concurrency_busy() -> None:
    server = SlowServer(0.05)
    records, elapsed = asyncio.run(run_closed_loop(MIX, server, concurrency=2, seconds=0.3))
    assert server.peak == 2
    assert 10 <= len(records) <= 14  # 2 clients × 0.3 s / 0.05 s, plus the last round
    assert elapsed >= 0.3


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome(200), "ok"),
        (Outcome(503), "shed"),
        (Outcome(422), "rejected"),
        (Outcome(413), "rejected"),
        (Outcome(500), "error"),
        (Outcome(None, error="timeout"), "timeout"),
        (Outcome(None, error="ConnectError"), "error"),
    ],
)
def test_classify(outcome: Outcome, status: str) -> None:
    assert classify(outcome) == status


def test_only_loopback_is_targeted() -> None:
    assert check_loopback("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    for url in ("http://example.com", "http://10.0.0.1:8000", "http://0.0.0.0:1"):
        with pytest.raises(ValueError, match=r"only 127\.0\.0\.1"):
            check_loopback(url)


def test_schedule_constant_rate_levels() -> None:
    levels = profile(2.0, [0.5, 2.0], seconds=10.0)
    assert [lv.rate for lv in levels] == [1.0, 4.0]
    arrivals = schedule(levels, mix_size=7, seed=3)
    first = [a for a in arrivals if a.level == 0]
    second = [a for a in arrivals if a.level == 1]
    assert len(first) == 10 and len(second) == 40
    assert np.allclose(np.diff([a.offset for a in second]), 0.25)
    assert all(10.0 < a.offset <= 20.0 for a in second)
    assert all(0 <= a.spec < 7 for a in arrivals)
    assert schedule(levels, 7, seed=3) == arrivals  # every policy sees the same sequence


def test_schedule_poisson_rate_is_about_right() -> None:
    arrivals = schedule([Level(1.0, 50.0, 20.0)], mix_size=1, seed=1, poisson=True)
    assert 850 < len(arrivals) < 1150  # mean 1000, sd ~32
    gaps = np.diff([a.offset for a in arrivals])
    assert gaps.std() > 0.5 * gaps.mean()  # exponential gaps, not a metronome


def test_profile_needs_a_measured_capacity() -> None:
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError):
            profile(bad, [1.0], 1.0)


def _rec(
    level: int,
    status: str,
    latency_ms: float | None = None,
    psnr: float | None = None,
    index: int = 0,
    gain: float | None = None,
) -> Record:
    return Record(
        index,
        level,
        0,
        0.0,
        0.001,
        None if latency_ms is None else latency_ms / 1000,
        status,
        method="m" if status == "ok" else "",
        tier="t" if status == "ok" else "",
        predicted_psnr=psnr,
        predicted_gain=gain,
    )


def test_level_summary_on_synthetic_records() -> None:
    records = [_rec(0, "ok", ms, psnr=30.0 + (ms % 2), gain=1.1) for ms in range(1, 101)]
    records += [_rec(0, "shed", 3.0)] * 6 + [_rec(0, "timeout")] * 2 + [_rec(0, "dropped")] * 2
    records[0].measured_psnr, records[0].bicubic_psnr = 29.0, 27.0
    summary = summarize_level(records, Level(2.0, 11.0, 10.0), slo_s=0.050)
    assert summary["offered"] == 110 and summary["offered_rate"] == pytest.approx(11.0)
    assert summary["counts"] == {"ok": 100, "shed": 6, "rejected": 0, "timeout": 2, "error": 0, "dropped": 2}
    # 50 ok answers within 50 ms out of 110 arrivals; sheds, timeouts and drops are misses
    assert summary["slo_attainment"] == pytest.approx(50 / 110)
    assert summary["shed_rate"] == pytest.approx(6 / 110)
    # percentiles over ok answers only (the fast 503s do not flatter them): 1..100 ms
    assert summary["latency_p50_ms"] == pytest.approx(50.5)
    assert summary["latency_p95_ms"] == pytest.approx(95.05)
    assert summary["latency_p99_ms"] == pytest.approx(99.01)
    assert summary["throughput_rps"] == pytest.approx(10.0) and summary["goodput_rps"] == pytest.approx(5.0)
    assert summary["predicted_psnr_db"] == pytest.approx(30.5)
    assert summary["predicted_gain_db"] == pytest.approx(1.1)
    # effective gain: the 50 answers within the SLO keep their gain, the 60 misses count 0 dB
    assert summary["effective_gain_db"] == pytest.approx(1.1 * 50 / 110)
    assert summary["served_as"] == {"m/t": 100}
    assert summary["measured"] == {
        "n": 1,
        "psnr_db": 29.0,
        "gain_db": 2.0,
        "predicted_psnr_db": 31.0,
        "bicubic_psnr_db": 27.0,
    }


def test_summarize_splits_by_level_and_handles_an_empty_level() -> None:
    levels = [Level(0.5, 1.0, 10.0), Level(1.0, 2.0, 10.0)]
    summaries = summarize([_rec(0, "ok", 10.0, 30.0), _rec(0, "shed", 1.0)], levels, slo_s=1.0)
    assert summaries[0]["slo_attainment"] == 0.5
    assert summaries[1]["offered"] == 0 and summaries[1]["slo_attainment"] is None
    assert summaries[1]["latency_p99_ms"] is None and summaries[1]["predicted_psnr_db"] is None
    assert percentile([], 99) is None


def _levels(attainments: list[float]) -> list[dict]:
    return [
        {"multiplier": m, "slo_attainment": a, "predicted_psnr_db": 30.0, "measured": {"psnr_db": None}}
        for m, a in zip([0.5, 1.0, 3.0], attainments, strict=True)
    ]


def _deltas(*deltas: float | None) -> list[dict]:
    return [{"n": 0 if d is None else 10, "delta_db": d} for d in deltas]


def test_targets_are_checked_at_the_levels_they_name() -> None:
    runs = {
        "adaptive": _levels([1.0, 1.0, 0.995]),
        "static-richest": _levels([1.0, 0.9, 0.3]),
        "static-cheapest": _levels([1.0, 1.0, 1.0]),
    }
    paired = {"static-richest": _deltas(-0.05, -0.5, -1.5), "static-cheapest": _deltas(2.0, 1.0, 0.2)}
    assert [c["met"] for c in check_targets(runs, paired)] == [True, True, True, True, True]

    runs["adaptive"] = _levels([1.0, 0.98, 0.9])
    paired = {"static-richest": _deltas(-0.2, -0.5, -1.5), "static-cheapest": _deltas(2.0, 1.0, -0.1)}
    by_target = {(c["target"][:5], c["level"]): c["met"] for c in check_targets(runs, paired)}
    assert by_target[("at 3x", 2)] is False  # 90% < 99%
    assert by_target[("at 0.", 0)] is False  # 0.2 dB below richest
    assert by_target[("every", 1)] is False  # better quality but 98% attainment
    assert by_target[("every", 2)] is False  # below cheapest
    assert by_target[("every", 0)] is True

    paired["static-cheapest"] = _deltas(None, 1.0, 1.0)  # nothing served by both: not measured
    assert check_targets(runs, paired)[2]["met"] is None


def test_paired_delta_compares_the_same_arrivals() -> None:
    a = [_rec(0, "ok", 5, 31.0, index=0), _rec(0, "ok", 5, 30.0, index=1), _rec(0, "shed", 1, index=2)]
    b = [_rec(0, "ok", 5, 30.5, index=0), _rec(0, "shed", 1, index=1), _rec(0, "ok", 5, 20.0, index=2)]
    b.append(_rec(1, "ok", 5, 10.0, index=3))  # another level
    assert paired_delta(a, b, 0) == {"n": 1, "delta_db": pytest.approx(0.5)}
    assert paired_delta(a, b, 1) == {"n": 0, "delta_db": None}


def _png(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def test_mix_pairs_a_bicubic_lr_with_its_exact_hr(tmp_path) -> None:
    for i, size in enumerate([(50, 40), (90, 70)]):
        (tmp_path / "set").mkdir(exist_ok=True)
        _png(size, i).save(tmp_path / "set" / f"img_{i}.png")
    mix = build_mix([tmp_path / "set"], sides=[32, 48], scales=[2.0, 3.0], count=6, seed=0)
    assert len(mix) == 6 and {m.source for m in mix} == {"set/img_0.png", "set/img_1.png"}
    for spec in mix:
        lr = Image.open(io.BytesIO(spec.lr_png))
        assert spec.width == round(lr.width * spec.scale) and spec.height == round(lr.height * spec.scale)
        assert spec.width <= 48 and spec.params(900.0) == {
            "width": str(spec.width),
            "height": str(spec.height),
            "deadline_ms": "900",
        }
        perfect = io.BytesIO()
        spec.hr.save(perfect, format="PNG")
        assert spec.psnr_of(perfect.getvalue()) == math.inf
        assert 0 < spec.bicubic_psnr() < 40  # noise does not survive downscaling
    assert build_mix([tmp_path / "set"], [32, 48], [2.0, 3.0], 6, seed=0)[3].lr_png == mix[3].lr_png
