import pytest
from pydantic import ValidationError

from deployments.canary import (
    CanaryController,
    RolloutConfig,
    RolloutError,
    RolloutGuards,
    RolloutState,
    StatsWindow,
    StepStats,
    VariantSample,
    VariantStats,
    counts_as_error,
    p95,
    step_stats,
)

GUARDS = RolloutGuards(max_error_rate=0.02, max_p95_ttft_ratio=1.5, min_requests=100)


def config(**overrides) -> RolloutConfig:
    fields = {"baseline": "v1", "candidate": "v2", "steps": [5, 25, 50, 100], "step_seconds": 60, "guards": GUARDS}
    return RolloutConfig.model_validate({**fields, **overrides})


def healthy(requests: int = 200, p95_s: float = 0.2, baseline_p95_s: float = 0.2) -> StepStats:
    return StepStats(baseline=VariantStats(1000, 0, baseline_p95_s), candidate=VariantStats(requests, 0, p95_s))


# ---- config ----


def test_config_defaults_and_validation():
    default = RolloutConfig(baseline="a", candidate="b")
    assert default.steps == [5, 25, 50, 100] and default.guards.min_requests == 50
    for bad in (
        {"candidate": "v1"},
        {"steps": []},
        {"steps": [5, 5, 50]},
        {"steps": [50, 25]},
        {"steps": [0, 50]},
        {"steps": [50, 101]},
        {"step_seconds": 0},
        {"guards": {"max_error_rate": 1.5}},
        {"guards": {"min_requests": 0}},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            config(**bad)


def test_weights_split_the_pairs_share_and_leave_other_variants_alone():
    rollout = config()
    assert rollout.weights({"v1": 100, "v2": 0}, 25) == {"v1": 75, "v2": 25}
    assert rollout.weights({"v1": 60, "v2": 20, "v3": 20}, 50) == {"v1": 40, "v2": 40, "v3": 20}
    assert rollout.weights({"v1": 100, "v2": 0}, 0) == {"v1": 100, "v2": 0}
    with pytest.raises(KeyError):
        rollout.weights({"v1": 100}, 5)


# ---- the happy path ----


def test_healthy_candidate_advances_through_every_step_then_is_promoted():
    controller = CanaryController(config())
    transition = controller.start(now=0)
    assert (transition.action.kind, transition.action.candidate_weight) == ("set_weight", 5)
    seen = [transition.action.candidate_weight]
    now = 0.0
    for _ in range(10):
        now += 61
        transition = controller.evaluate(transition.state, now, healthy())
        seen.append(transition.action.candidate_weight)
        if transition.action.kind == "promote":
            break
    assert seen == [5, 25, 50, 100, 100]
    assert transition.state.phase == "promoted"
    assert transition.action.reason == "all 4 steps healthy"


def test_an_advance_starts_the_next_steps_clock():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    advanced = controller.evaluate(state, 61, healthy()).state
    assert (advanced.step, advanced.step_started_at) == (1, 61)
    held = controller.evaluate(advanced, 100, healthy())  # 39 s into the 60 s step
    assert held.action.kind == "hold" and held.action.candidate_weight == 25
    assert "39s of 60s" in held.action.reason


# ---- holding ----


def test_holds_until_the_step_has_lasted_long_enough():
    controller = CanaryController(config())
    state = controller.start(now=1000).state
    transition = controller.evaluate(state, 1059.9, healthy(baseline_p95_s=0.25))
    assert transition.action.kind == "hold" and transition.action.candidate_weight == 5
    assert (transition.state.phase, transition.state.step, transition.state.step_started_at) == ("ramping", 0, 1000)
    assert transition.state.baseline_p95_ttft_s == 0.25  # remembered while holding


def test_holds_with_too_few_requests_even_after_the_step_time():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    transition = controller.evaluate(state, 10_000, healthy(requests=99))
    assert transition.action.kind == "hold"
    assert "too few candidate requests" in transition.action.reason and "99 < 100" in transition.action.reason


def test_few_errors_among_few_requests_is_not_yet_a_verdict():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    # 2 errors in 10 requests is 20 %, but 2 of the 100 needed would still be within 2 %.
    stats = StepStats(VariantStats(1000, 0, 0.2), VariantStats(10, 2, 0.2))
    assert controller.evaluate(state, 10, stats).action.kind == "hold"


def test_holds_without_a_baseline_to_compare_with():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    stats = StepStats(VariantStats(50, 0, 0.2), VariantStats(200, 0, 0.2))  # baseline under min_requests
    transition = controller.evaluate(state, 61, stats)
    assert transition.action.kind == "hold" and "no baseline" in transition.action.reason


def test_holds_without_candidate_ttft():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    transition = controller.evaluate(state, 61, StepStats(VariantStats(1000, 0, 0.2), VariantStats(200, 0, None)))
    assert transition.action.kind == "hold" and "no candidate TTFT" in transition.action.reason


# ---- rolling back ----


def test_error_rate_breach_rolls_back_at_once_without_waiting_for_the_step():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    stats = StepStats(VariantStats(1000, 0, 0.2), VariantStats(100, 3, 0.2))  # 3 % > 2 %
    transition = controller.evaluate(state, 5, stats)
    assert transition.action.kind == "rollback" and transition.action.candidate_weight == 0
    assert transition.state.phase == "rolled_back"
    assert "error rate 3.00% > 2.00%" in transition.action.reason


def test_error_rate_exactly_at_the_limit_is_allowed():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    stats = StepStats(VariantStats(1000, 0, 0.2), VariantStats(100, 2, 0.2))
    assert controller.evaluate(state, 61, stats).action.kind == "set_weight"


def test_errors_that_already_settle_the_verdict_roll_back_before_min_requests():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    # 3 errors can no longer be 2 % or less of the 100 requests the step needs.
    stats = StepStats(VariantStats(1000, 0, 0.2), VariantStats(3, 3, None))
    transition = controller.evaluate(state, 1, stats)
    assert transition.action.kind == "rollback" and "already exceed" in transition.action.reason


def test_slow_candidate_rolls_back():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    transition = controller.evaluate(state, 10, healthy(p95_s=0.31, baseline_p95_s=0.2))  # 1.55x
    assert transition.action.kind == "rollback"
    assert "1.55x" in transition.action.reason and "limit 1.5x" in transition.action.reason


def test_latency_within_the_ratio_advances():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    assert controller.evaluate(state, 61, healthy(p95_s=0.29, baseline_p95_s=0.2)).action.kind == "set_weight"


def test_the_100_percent_step_compares_with_the_remembered_baseline():
    controller = CanaryController(config(steps=[50, 100]))
    state = controller.start(now=0).state
    state = controller.evaluate(state, 61, healthy(baseline_p95_s=0.2)).state
    assert state.step == 1 and state.baseline_p95_ttft_s == 0.2
    no_baseline_traffic = StepStats(VariantStats(0, 0, None), VariantStats(500, 0, 0.5))
    transition = controller.evaluate(state, 70, no_baseline_traffic)
    assert transition.action.kind == "rollback" and "2.50x" in transition.action.reason


def test_a_guard_breach_in_a_later_step_rolls_back_from_there():
    controller = CanaryController(config())
    transition = controller.start(now=0)
    transition = controller.evaluate(transition.state, 61, healthy())
    transition = controller.evaluate(transition.state, 122, healthy())
    assert transition.action.candidate_weight == 50
    failing = StepStats(VariantStats(500, 0, 0.2), VariantStats(500, 50, 0.2))
    transition = controller.evaluate(transition.state, 130, failing)
    assert transition.action.kind == "rollback" and "at 50%" in transition.action.reason


def test_finished_rollouts_only_hold():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    rolled_back = controller.evaluate(state, 1, StepStats(VariantStats(1000, 0, 0.2), VariantStats(100, 50, 0.2)))
    again = controller.evaluate(rolled_back.state, 1000, healthy())
    assert again.action.kind == "hold" and again.action.candidate_weight == 0
    assert again.state == rolled_back.state and "rolled back" in again.action.reason


# ---- manual transitions ----


def test_manual_promote_and_abort():
    controller = CanaryController(config())
    state = controller.start(now=0).state
    promoted = controller.promote(state, now=5)
    assert (promoted.action.kind, promoted.action.candidate_weight) == ("promote", 100)
    assert promoted.state.phase == "promoted"
    assert controller.evaluate(promoted.state, 100, healthy()).action.candidate_weight == 100
    aborted = controller.abort(state, now=5, reason="bad outputs reported")
    assert (aborted.action.kind, aborted.action.candidate_weight) == ("rollback", 0)
    assert (aborted.state.phase, aborted.state.reason) == ("aborted", "bad outputs reported")


@pytest.mark.parametrize("phase", ["promoted", "rolled_back", "aborted"])
def test_manual_transitions_from_a_finished_rollout_are_refused(phase):
    controller = CanaryController(config())
    state = RolloutState(phase=phase, step=0, step_started_at=0)
    with pytest.raises(RolloutError):
        controller.promote(state, now=1)
    with pytest.raises(RolloutError):
        controller.abort(state, now=1)


# ---- collecting step stats ----


def test_p95_is_nearest_rank():
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([float(i) for i in range(1, 21)]) == 19.0


def test_only_server_faults_count_as_errors():
    assert [counts_as_error(s) for s in (200, 400, 404, 429, 499, 500, 503)] == [
        False,
        False,
        False,
        False,
        False,
        True,
        True,
    ]


def test_stats_window_and_merging_replicas():
    first, second = StatsWindow(), StatsWindow()
    for i in range(10):
        first.record("v1", status=200, ttft_s=0.1 * (i + 1))
    first.record("v2", status=503)
    second.record("v2", status=200, ttft_s=2.0)
    second.record("v2", status=200, ttft_s=1.0)
    stats = step_stats([first.snapshot(), second.snapshot()], baseline="v1", candidate="v2")
    assert stats.baseline == VariantStats(10, 0, pytest.approx(1.0))
    assert stats.candidate == VariantStats(3, 1, 2.0)
    first.reset()
    assert first.snapshot() == {}
    empty = step_stats([], baseline="v1", candidate="v2")
    assert empty.candidate == VariantStats(0, 0, None)


def test_stats_window_keeps_only_recent_ttfts():
    window = StatsWindow(max_samples=3)
    for value in (9.0, 1.0, 2.0, 3.0):
        window.record("v1", status=200, ttft_s=value)
    assert window.snapshot()["v1"] == VariantSample(4, 0, (1.0, 2.0, 3.0))
