"""The policy as a pure function: synthetic load snapshots in, decisions out (no models, no timing)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from service.controller import (
    Candidate,
    ControllerConfig,
    Need,
    choose,
    contention_factor,
    expected_wait,
    memory_estimate,
)
from service.load import LoadSnapshot

# Two methods, cheapest -> richest; seconds = gmacs * 0.1 uncontended.
CANDIDATES = [
    Candidate("ssrno", "XS", 0, 30.0, gmacs=1.0, seconds_per_gmac=0.1),
    Candidate("ssrno", "M", 1, 30.5, gmacs=4.0, seconds_per_gmac=0.1),
    Candidate("ssrno", "X", 2, 31.0, gmacs=10.0, seconds_per_gmac=0.1),
    Candidate("anysr", "w0.5", 0, 30.2, gmacs=2.0, seconds_per_gmac=0.1),
    Candidate("anysr", "w1", 1, 30.8, gmacs=6.0, seconds_per_gmac=0.1),
]
IDLE = LoadSnapshot(workers=1)
NO_HYSTERESIS = ControllerConfig(hysteresis=0.0)


def busy(backlog_seconds: float, queued: int = 1, **kw) -> LoadSnapshot:
    return LoadSnapshot(workers=1, running=1, queued=queued, backlog_seconds=backlog_seconds, **kw)


def picked(decision) -> tuple[str, str]:
    assert decision.outcome == "run", decision
    return decision.candidate.key


def test_idle_server_gets_the_richest_tier() -> None:
    decision = choose(IDLE, CANDIDATES, Need(budget_seconds=5.0))
    assert picked(decision) == ("ssrno", "X")
    assert decision.wait_seconds == 0.0
    assert decision.compute_seconds == pytest.approx(1.0)


def test_backlog_degrades_to_cheaper_tiers_step_by_step() -> None:
    need = Need(budget_seconds=2.0)
    # 0.5 s wait: X (1.0 s) still fits. 1.2 s: X no longer, w1 (0.6 s) does. 1.5 s: M (0.4 s).
    assert picked(choose(busy(0.5), CANDIDATES, need)) == ("ssrno", "X")
    assert picked(choose(busy(1.2), CANDIDATES, need)) == ("anysr", "w1")
    assert picked(choose(busy(1.5), CANDIDATES, need)) == ("ssrno", "M")
    assert picked(choose(busy(1.85), CANDIDATES, need)) == ("ssrno", "XS")


def test_wait_is_shared_by_the_workers() -> None:
    snap = LoadSnapshot(workers=4, running=4, queued=2, backlog_seconds=4.0)
    assert expected_wait(snap) == pytest.approx(1.0)
    assert expected_wait(LoadSnapshot(workers=2, running=1, queued=0, backlog_seconds=3.0)) == 0.0


def test_measured_wait_correction_scales_the_wait_and_the_choice() -> None:
    snap = LoadSnapshot(workers=1, running=1, queued=2, backlog_seconds=1.0, wait_correction=1.5)
    assert expected_wait(snap) == pytest.approx(1.5)
    need = Need(budget_seconds=2.0)
    # Backlog 0.5 s: X (1.0 s) fits as predicted; once waits are known to run 2.4× long it does not.
    assert picked(choose(busy(0.5), CANDIDATES, need)) == ("ssrno", "X")
    corrected = choose(replace(busy(0.5), wait_correction=2.4), CANDIDATES, need)
    assert picked(corrected) == ("anysr", "w1") and corrected.wait_seconds == pytest.approx(1.2)
    # The pool learns the correction from the prediction made before it, which the decision carries.
    assert corrected.raw_wait_seconds == pytest.approx(0.5)


def test_impossible_under_load_is_shed_with_retry_after() -> None:
    decision = choose(busy(5.0), CANDIDATES, Need(budget_seconds=2.0))
    assert decision.outcome == "shed" and decision.reason == "deadline"
    # cheapest: 5.0 wait + 0.1 compute - 2.0 budget = 3.1 s until it would fit
    assert decision.retry_after_seconds == pytest.approx(3.1)


def test_impossible_even_when_idle_is_rejected_not_shed() -> None:
    decision = choose(IDLE, CANDIDATES, Need(budget_seconds=0.05))
    assert decision.outcome == "reject" and decision.reason == "deadline_unachievable"
    assert "deadline_ms" in decision.message


def test_min_quality_filters_out_cheap_tiers() -> None:
    need = Need(budget_seconds=2.0, min_quality_db=30.5)
    assert picked(choose(busy(1.5), CANDIDATES, need)) == ("ssrno", "M")
    # Under more load only tiers below the floor would fit: shed rather than break the floor.
    decision = choose(busy(1.7), CANDIDATES, need)
    assert decision.outcome == "shed"


def test_unreachable_min_quality_is_rejected() -> None:
    decision = choose(IDLE, CANDIDATES, Need(budget_seconds=10.0, min_quality_db=40.0))
    assert decision.outcome == "reject" and decision.reason == "quality_unreachable"


def test_method_pinned_means_only_its_tiers() -> None:
    anysr = [c for c in CANDIDATES if c.method == "anysr"]
    assert picked(choose(IDLE, anysr, Need(budget_seconds=5.0))) == ("anysr", "w1")
    assert picked(choose(busy(1.5), anysr, Need(budget_seconds=2.0))) == ("anysr", "w0.5")


def test_pinned_tier_runs_or_sheds_but_never_degrades() -> None:
    pinned = [CANDIDATES[2]]  # ssrno X, 1.0 s
    assert picked(choose(IDLE, pinned, Need(budget_seconds=2.0))) == ("ssrno", "X")
    decision = choose(busy(1.5), pinned, Need(budget_seconds=2.0))
    assert decision.outcome == "shed" and decision.candidate.key == ("ssrno", "X")


def test_static_policy_is_a_single_candidate_with_the_same_rules() -> None:
    static = [CANDIDATES[0]]
    assert picked(choose(busy(1.0), static, Need(budget_seconds=2.0))) == ("ssrno", "XS")
    assert choose(busy(3.0), static, Need(budget_seconds=2.0)).outcome == "shed"


def test_full_queue_is_shed_before_anything_else() -> None:
    snap = LoadSnapshot(workers=1, running=1, queued=8, max_queue=8, backlog_seconds=0.1)
    decision = choose(snap, CANDIDATES, Need(budget_seconds=100.0))
    assert decision.outcome == "shed" and decision.reason == "queue_full"
    assert decision.retry_after_seconds >= 1.0


def test_memory_pressure_sheds() -> None:
    snap = LoadSnapshot(memory_bytes=900, memory_limit_bytes=1000)
    decision = choose(snap, CANDIDATES, Need(budget_seconds=10.0, memory_bytes=200))
    assert decision.outcome == "shed" and decision.reason == "memory"
    gpu = LoadSnapshot(gpu_memory_bytes=90, gpu_memory_total_bytes=100)
    assert choose(gpu, CANDIDATES, Need(budget_seconds=10.0, memory_bytes=10)).reason == "memory"
    assert memory_estimate(100, 400) > memory_estimate(100, 100)


def test_cpu_contention_from_other_processes_makes_tiers_cheaper() -> None:
    # Other processes use 80% of the CPU: compute predicted 1.8x slower.
    snap = LoadSnapshot(cpu_utilization=0.9, process_cpu_utilization=0.1)
    assert contention_factor(snap, 1.0) == pytest.approx(1.8)
    assert contention_factor(snap, 0.0) == 1.0
    need = Need(budget_seconds=1.5)
    assert picked(choose(IDLE, CANDIDATES, need)) == ("ssrno", "X")
    assert picked(choose(snap, CANDIDATES, need)) == ("anysr", "w1")
    # Our own CPU use is not contention: the backlog already accounts for it.
    assert contention_factor(LoadSnapshot(cpu_utilization=0.9, process_cpu_utilization=0.9), 1.0) == 1.0


def test_overhead_is_part_of_every_prediction() -> None:
    config = ControllerConfig(overhead_seconds=0.5)
    decision = choose(IDLE, CANDIDATES, Need(budget_seconds=1.2), config)
    assert picked(decision) == ("anysr", "w1")  # X would need 1.5 s
    assert decision.compute_seconds == pytest.approx(1.1)


def test_hysteresis_needs_headroom_to_climb_but_not_to_stay() -> None:
    need = Need(budget_seconds=2.0)
    snap = busy(0.9)  # X predicted at 1.9 s: fits the budget but not 85% of it (1.7 s)
    config = ControllerConfig(hysteresis=0.15)
    assert picked(choose(snap, CANDIDATES, need, NO_HYSTERESIS, previous=("anysr", "w1"))) == ("ssrno", "X")
    assert picked(choose(snap, CANDIDATES, need, config, previous=("anysr", "w1"))) == ("anysr", "w1")
    # Already at X: staying only needs the plain budget.
    assert picked(choose(snap, CANDIDATES, need, config, previous=("ssrno", "X"))) == ("ssrno", "X")
    # With plenty of headroom it climbs.
    assert picked(choose(busy(0.2), CANDIDATES, need, config, previous=("anysr", "w1"))) == ("ssrno", "X")


def test_choice_follows_load_down_and_back_up() -> None:
    need, config, previous = Need(budget_seconds=2.0), ControllerConfig(hysteresis=0.15), None
    seen = []
    for backlog in (0.0, 0.5, 1.2, 1.6, 1.85, 1.6, 1.2, 0.5, 0.0):
        decision = choose(busy(backlog), CANDIDATES, need, config, previous)
        previous = picked(decision)
        seen.append(previous[1])
    assert seen[0] == "X" and seen[4] == "XS" and seen[-1] == "X"
    quality = {c.tier: c.predicted_psnr_db for c in CANDIDATES}
    down, up = seen[:5], seen[4:]
    assert all(quality[a] >= quality[b] for a, b in itertools.pairwise(down))
    assert all(quality[a] <= quality[b] for a, b in itertools.pairwise(up))


def test_equal_quality_prefers_the_richer_tier_then_fewer_macs() -> None:
    unknown = [
        Candidate("a", "small", 0, 0.0, gmacs=1.0, seconds_per_gmac=0.1),
        Candidate("a", "big", 1, 0.0, gmacs=2.0, seconds_per_gmac=0.1),
        Candidate("b", "big", 1, 0.0, gmacs=1.5, seconds_per_gmac=0.1),
    ]
    assert picked(choose(IDLE, unknown, Need(budget_seconds=5.0))) == ("b", "big")


def test_no_candidates_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        choose(IDLE, [], Need(budget_seconds=1.0))


def test_slack_reserve_degrades_before_the_deadline_but_keeps_the_cheapest_whole() -> None:
    need = Need(budget_seconds=2.0)
    greedy, reserved = ControllerConfig(hysteresis=0.0), ControllerConfig(hysteresis=0.0, reserve=0.3)
    # 0.5 s wait: X needs 1.5 s in all, within the 2.0 s budget but not within 70 % of it (1.4 s).
    assert picked(choose(busy(0.5), CANDIDATES, need, greedy)) == ("ssrno", "X")
    assert picked(choose(busy(0.5), CANDIDATES, need, reserved)) == ("anysr", "w1")
    # 1.85 s wait: only the cheapest fits, and it may still use the whole budget.
    assert picked(choose(busy(1.85), CANDIDATES, need, reserved)) == ("ssrno", "XS")
    # A single (static or pinned) candidate is the cheapest of its list: the reserve never sheds it.
    only_x = [c for c in CANDIDATES if c.tier == "X"]
    assert picked(choose(busy(0.9), only_x, need, reserved)) == ("ssrno", "X")


def test_demand_limits_each_request_to_what_the_arrival_rate_can_sustain() -> None:
    """A generous deadline fits every tier; the rate allowance (target ÷ demand × the cheapest
    compute, 0.1 s here) decides: ×4 at demand 0.2 (up to 0.4 s: M), ×1 and below at 0.8 or more."""
    need, config = Need(budget_seconds=30.0), ControllerConfig(hysteresis=0.0, utilization_target=0.8)
    assert picked(choose(LoadSnapshot(demand=0.0), CANDIDATES, need, config)) == ("ssrno", "X")
    assert picked(choose(LoadSnapshot(demand=0.08), CANDIDATES, need, config)) == ("ssrno", "X")
    assert picked(choose(LoadSnapshot(demand=0.2), CANDIDATES, need, config)) == ("ssrno", "M")
    assert picked(choose(LoadSnapshot(demand=0.35), CANDIDATES, need, config)) == ("anysr", "w0.5")
    for demand in (0.8, 1.0, 5.0):  # the cheapest is never refused for the rate's sake
        assert picked(choose(LoadSnapshot(demand=demand), CANDIDATES, need, config)) == ("ssrno", "XS")
    # Without a target the rate is ignored; a single (pinned or static) candidate always passes.
    assert picked(choose(LoadSnapshot(demand=5.0), CANDIDATES, need, NO_HYSTERESIS)) == ("ssrno", "X")
    only_x = [c for c in CANDIDATES if c.tier == "X"]
    assert picked(choose(LoadSnapshot(demand=5.0), only_x, need, config)) == ("ssrno", "X")


def test_rate_allowance_is_relative_to_the_cheapest_candidate_left_eligible() -> None:
    """With min_quality excluding XS, w0.5 (0.2 s) is the cheapest: ×2 at demand 0.4 admits M (0.4 s)."""
    config = ControllerConfig(hysteresis=0.0, utilization_target=0.8)
    need = Need(budget_seconds=30.0, min_quality_db=30.1)
    assert picked(choose(LoadSnapshot(demand=0.4), CANDIDATES, need, config)) == ("ssrno", "M")
    assert picked(choose(LoadSnapshot(demand=0.9), CANDIDATES, need, config)) == ("anysr", "w0.5")
