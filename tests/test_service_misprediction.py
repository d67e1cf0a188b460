"""The measured ÷ predicted estimator behind the wait correction and the compute margin."""

from __future__ import annotations

import pytest

from service.misprediction import MAX_RATIO, RatioEstimate


def test_exact_predictions_need_no_margin() -> None:
    estimate = RatioEstimate()
    for _ in range(50):
        estimate.observe(1.0, 1.0)
    assert estimate.bound(2.0) == pytest.approx(1.0)


def test_bias_moves_the_mean_and_spread_widens_the_bound() -> None:
    biased, noisy = RatioEstimate(), RatioEstimate()
    for i in range(200):
        biased.observe(1.0, 1.3)
        noisy.observe(1.0, 1.0 + (0.3 if i % 2 else -0.3))
    assert biased.mean == pytest.approx(1.3, abs=1e-3) and biased.deviation < 0.01
    assert noisy.mean == pytest.approx(1.0, abs=0.05) and noisy.deviation == pytest.approx(0.3, abs=0.05)
    # Same mean error (0.3) but the noisy one needs its margin in the tail: 1 + 2·0.3.
    assert noisy.bound(2.0) == pytest.approx(1.6, abs=0.1)
    assert noisy.bound(0.0) == pytest.approx(1.0, abs=0.05)


def test_one_wild_sample_moves_it_a_bounded_step() -> None:
    estimate = RatioEstimate()
    estimate.observe(0.001, 10.0)  # a stall 10,000× the prediction counts as MAX_RATIO
    assert estimate.mean == pytest.approx(1.0 + estimate.alpha * (MAX_RATIO - 1.0))
    assert estimate.bound(100.0) == MAX_RATIO
