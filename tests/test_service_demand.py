"""The demand meter: cheapest compute asked for per second and worker, over a sliding window."""

from __future__ import annotations

import pytest

from service.demand import DemandMeter


def test_demand_is_the_window_sum_per_second_and_worker() -> None:
    meter = DemandMeter(window_seconds=4.0)
    assert meter.utilization(workers=1, now=100.0) == 0.0
    for t in range(8):  # two arrivals a second, 0.25 s of cheapest compute each
        meter.record(0.25, now=100.0 + t / 2)
    assert meter.utilization(workers=1, now=103.9) == pytest.approx(0.5)
    assert meter.utilization(workers=2, now=103.9) == pytest.approx(0.25)


def test_old_arrivals_leave_the_window_and_an_empty_window_reads_zero() -> None:
    meter = DemandMeter(window_seconds=2.0)
    meter.record(1.0, now=10.0)
    meter.record(3.0, now=11.0)
    assert meter.utilization(workers=1, now=11.5) == pytest.approx(2.0)
    assert meter.utilization(workers=1, now=12.5) == pytest.approx(1.5)  # the first has left
    assert meter.utilization(workers=1, now=20.0) == 0.0
    meter.record(-1.0, now=21.0)  # a nonsense prediction counts as nothing
    assert meter.utilization(workers=1, now=21.0) == 0.0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DemandMeter(window_seconds=0)
