import pytest
from pydantic import ValidationError

from serve_app.admission import AdmissionConfig, AdmissionController, AdmissionDecision, EngineLoad, Saturated

CONFIG = AdmissionConfig(max_waiting=8, max_kv_cache_usage=0.9, batch_turnover_s=2, max_retry_after_s=30)
IDLE = EngineLoad(waiting_requests=0, kv_cache_usage=0.2, running_requests=4)
QUEUED = EngineLoad(waiting_requests=8, kv_cache_usage=0.5, running_requests=16)
KV_FULL = EngineLoad(waiting_requests=0, kv_cache_usage=0.9, running_requests=16)


def controller(in_flight=(), config=CONFIG):
    ctl = AdmissionController(config)
    for key, cost in in_flight:
        ctl.start(key, cost)
    return ctl


def test_defaults():
    config = AdmissionConfig()
    assert (config.enabled, config.max_waiting, config.max_kv_cache_usage) == (True, 16, 0.95)


@pytest.mark.parametrize(
    ("load", "saturated"),
    [
        (IDLE, False),
        (EngineLoad(7, 0.89, 16), False),
        (QUEUED, True),
        (KV_FULL, True),
        (EngineLoad(100, 1.0, 0), True),
    ],
)
def test_saturation_is_a_queue_at_max_waiting_or_kv_cache_at_its_threshold(load, saturated):
    assert controller().saturated(load) is saturated


def test_a_pool_with_room_admits_everyone_even_a_hog():
    ctl = controller([("hog", 10_000), ("light", 10)])
    decision = ctl.decide("hog", IDLE)
    assert decision == AdmissionDecision(admitted=True, reason="not_saturated")


def test_without_a_load_snapshot_everything_is_admitted():
    ctl = controller([("hog", 10_000), ("light", 10)])
    assert ctl.decide("hog", None) == AdmissionDecision(admitted=True, reason="load_unknown")


def test_disabled_admits_even_when_saturated():
    ctl = controller([("hog", 10_000), ("light", 10)], config=CONFIG.model_copy(update={"enabled": False}))
    assert ctl.decide("hog", QUEUED).admitted


@pytest.mark.parametrize("load", [QUEUED, KV_FULL])
def test_under_saturation_the_key_over_its_fair_share_is_refused_and_the_others_admitted(load):
    ctl = controller([("hog", 900), ("light", 100)])  # share: 1000 / 2 = 500 each
    refused = ctl.decide("hog", load)
    assert (refused.admitted, refused.reason) == (False, "over_fair_share")
    assert ctl.decide("light", load) == AdmissionDecision(admitted=True, reason="under_fair_share")
    # A newcomer counts as a third sharer (share 333) and holds nothing.
    assert ctl.decide("newcomer", load).admitted


def test_a_key_exactly_at_its_share_is_refused():
    ctl = controller([("a", 300), ("b", 300)])
    assert ctl.fair_share("a") == 300
    assert not ctl.decide("a", QUEUED).admitted


def test_the_only_key_in_flight_is_refused_when_it_alone_saturates_the_pool():
    assert not controller([("solo", 50)]).decide("solo", QUEUED).admitted


def test_with_nothing_in_flight_here_a_saturated_pool_refuses():
    ctl = controller()
    assert ctl.fair_share("anyone") == 0
    assert not ctl.decide("anyone", QUEUED).admitted


def test_finishing_work_brings_a_key_back_under_its_share():
    ctl = controller([("hog", 900), ("light", 100)])
    assert not ctl.decide("hog", QUEUED).admitted
    ctl.finish("hog", 850)  # 50 vs share 75
    assert ctl.decide("hog", QUEUED).admitted


@pytest.mark.parametrize(
    ("load", "expected"),
    [
        (KV_FULL, 2.0),  # nothing queued: one turnover
        (QUEUED, 3.0),  # 8 waiting behind 16 running: half a batch more
        (EngineLoad(64, 0.5, 8), 18.0),  # 8 batches queued
        (EngineLoad(1000, 0.5, 1), 30.0),  # capped
        (EngineLoad(8, 0.5, 0), 18.0),  # nothing running counts as one
    ],
)
def test_retry_after_estimates_batches_queued_ahead(load, expected):
    assert controller().retry_after_s(load) == pytest.approx(expected)


def test_retry_after_is_at_least_a_second():
    ctl = controller(config=CONFIG.model_copy(update={"batch_turnover_s": 0.1}))
    assert ctl.retry_after_s(KV_FULL) == 1.0


def test_a_refusal_renders_as_429_overloaded_with_retry_after():
    decision = controller([("hog", 900), ("light", 100)]).decide("hog", QUEUED)
    assert decision.retry_after_s == pytest.approx(3.0)
    error = decision.error()
    assert isinstance(error, Saturated)
    assert (error.status_code, error.code, error.error_type) == (429, "overloaded", "rate_limit_error")
    assert error.response_headers() == {"retry-after": "3"}
    assert AdmissionDecision(admitted=True).error() is None


def test_in_flight_bookkeeping_holds_only_active_keys():
    ctl = controller([("a", 10), ("a", 5), ("b", 7)])
    assert (ctl.in_flight("a"), ctl.in_flight("b"), ctl.total_in_flight, ctl.active_keys) == (15, 7, 22, 2)
    ctl.finish("a", 15)
    assert (ctl.in_flight("a"), ctl.total_in_flight, ctl.active_keys) == (0, 7, 1)


def test_finishing_more_than_started_clamps_at_zero():
    ctl = controller([("a", 10), ("b", 10)])
    ctl.finish("a", 25)
    ctl.finish("never-started", 5)
    assert (ctl.in_flight("a"), ctl.total_in_flight, ctl.active_keys) == (0, 10, 1)


def test_negative_costs_are_programming_errors():
    ctl = controller()
    with pytest.raises(ValueError):
        ctl.start("a", -1)
    with pytest.raises(ValueError):
        ctl.finish("a", -1)


@pytest.mark.parametrize(
    "bad",
    [{"max_waiting": 0}, {"max_kv_cache_usage": 1.5}, {"max_kv_cache_usage": 0}, {"batch_turnover_s": 0}, {"x": 1}],
)
def test_config_validation(bad):
    with pytest.raises(ValidationError):
        AdmissionConfig.model_validate(bad)
