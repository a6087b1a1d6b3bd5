import copy
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.auth import Principal
from serve_app.ratelimit import (
    CostExceedsLimit,
    RateDecision,
    RateLimited,
    RateLimiter,
    RateLimits,
    limits_by_key,
    retry_after_header,
)


def limiter(**limits):
    return RateLimiter({"k": RateLimits(**limits)})


def test_keys_without_limits_are_always_allowed_and_hold_no_state():
    rl = RateLimiter({"limited": RateLimits(requests_per_s=1)})
    for i in range(100):
        assert rl.check_and_consume("someone-else", 10_000, now=i * 0.001).allowed
    assert len(rl) == 0


def test_requests_per_second_allows_one_seconds_burst_then_paces():
    rl = limiter(requests_per_s=2)
    assert rl.check_and_consume("k", 0, now=0).allowed
    assert rl.check_and_consume("k", 0, now=0).allowed
    refused = rl.check_and_consume("k", 0, now=0)
    assert (refused.allowed, refused.reason) == (False, "requests_per_s")
    assert refused.retry_after_s == pytest.approx(0.5)
    assert not rl.check_and_consume("k", 0, now=0.49).allowed
    assert rl.check_and_consume("k", 0, now=0.5).allowed


def test_a_rate_below_one_per_second_still_admits_one_request_at_a_time():
    rl = limiter(requests_per_s=0.5)
    assert rl.check_and_consume("k", 0, now=0).allowed
    refused = rl.check_and_consume("k", 0, now=1)
    assert refused.retry_after_s == pytest.approx(1.0)
    assert rl.check_and_consume("k", 0, now=2).allowed


def test_tokens_per_minute_charges_the_cost_and_refills_continuously():
    rl = limiter(tokens_per_minute=600)  # 10 tokens/s
    assert rl.check_and_consume("k", 400, now=0).allowed
    refused = rl.check_and_consume("k", 300, now=0)
    assert (refused.allowed, refused.reason) == (False, "tokens_per_minute")
    assert refused.retry_after_s == pytest.approx(10.0)  # 200 left, 100 short at 10/s
    assert rl.check_and_consume("k", 300, now=10).allowed
    assert not rl.check_and_consume("k", 1, now=10).allowed


def test_a_refused_request_consumes_nothing():
    rl = limiter(requests_per_s=1, tokens_per_minute=60)
    assert rl.check_and_consume("k", 60, now=0).allowed
    for t in (0.5, 0.6, 0.7):  # hammering while refused must not push the next slot further out
        assert not rl.check_and_consume("k", 30, now=t).allowed
    # Had the refusals been charged, the token bucket would still be short at 30 s; it holds exactly 30.
    assert rl.check_and_consume("k", 30, now=30).allowed


def test_the_longer_wait_is_reported_when_both_limits_refuse():
    rl = limiter(requests_per_s=1, tokens_per_minute=60)
    assert rl.check_and_consume("k", 60, now=0).allowed
    refused = rl.check_and_consume("k", 10, now=0)
    assert refused.reason == "tokens_per_minute"
    assert refused.retry_after_s == pytest.approx(10.0)
    refused = rl.check_and_consume("k", 0, now=0.5)
    assert refused.reason == "requests_per_s"
    assert refused.retry_after_s == pytest.approx(0.5)


def test_a_cost_above_the_whole_budget_is_a_400_not_a_retry():
    rl = limiter(tokens_per_minute=100)
    decision = rl.check_and_consume("k", 101, now=0)
    assert not decision.allowed
    assert math.isinf(decision.retry_after_s)
    error = decision.error()
    assert isinstance(error, CostExceedsLimit)
    assert (error.status_code, error.param, error.retryable) == (400, "max_tokens", False)
    assert "101 tokens" in error.message
    assert len(rl) == 0
    assert rl.check_and_consume("k", 100, now=0).allowed  # the budget is untouched


def test_refund_returns_unused_tokens_up_to_capacity():
    rl = limiter(tokens_per_minute=600)
    assert rl.check_and_consume("k", 500, now=0).allowed
    rl.refund("k", 400, now=0)
    assert rl.check_and_consume("k", 500, now=0).allowed
    rl.refund("k", 10_000, now=0)
    assert not rl.check_and_consume("k", 601, now=0).allowed
    assert rl.check_and_consume("k", 600, now=0).allowed
    rl.refund("unknown", 5, now=0)  # nothing to refund to: no error, no state
    assert len(rl) == 1


def test_negative_costs_are_programming_errors():
    rl = limiter(tokens_per_minute=60)
    with pytest.raises(ValueError):
        rl.check_and_consume("k", -1, now=0)
    with pytest.raises(ValueError):
        rl.refund("k", -1, now=0)


def test_a_clock_that_steps_back_adds_nothing():
    rl = limiter(requests_per_s=1)
    assert rl.check_and_consume("k", 0, now=100).allowed
    assert not rl.check_and_consume("k", 0, now=50).allowed
    assert not rl.check_and_consume("k", 0, now=100.5).allowed
    assert rl.check_and_consume("k", 0, now=101).allowed


def test_idle_keys_are_evicted_once_their_buckets_are_full_again():
    rl = RateLimiter(default=RateLimits(requests_per_s=1, tokens_per_minute=60))
    for i in range(50):
        rl.check_and_consume(f"client-{i}", 30, now=0)
    assert len(rl) == 50
    rl.check_and_consume("late", 30, now=29.9)  # the first 50 have not refilled yet: nothing can go
    assert len(rl) == 51
    assert rl.check_and_consume("later", 30, now=30).allowed  # the first 50 are full again
    assert len(rl) == 2


def test_max_keys_bounds_memory_by_dropping_the_least_recently_seen():
    rl = RateLimiter(default=RateLimits(requests_per_s=1), max_keys=2)
    rl.check_and_consume("a", 0, now=0)
    rl.check_and_consume("b", 0, now=0)
    rl.check_and_consume("a", 0, now=0.1)  # refused, but seen: "b" is now the oldest
    rl.check_and_consume("c", 0, now=0.2)
    assert len(rl) == 2
    assert not rl.check_and_consume("a", 0, now=0.3).allowed  # a kept its state
    assert rl.check_and_consume("b", 0, now=0.3).allowed  # b was dropped: a fresh bucket


def test_refusals_render_as_429_with_a_whole_second_retry_after():
    error = RateDecision(allowed=False, retry_after_s=2.2, reason="requests_per_s").error()
    assert isinstance(error, RateLimited)
    assert (error.status_code, error.code, error.retryable) == (429, "rate_limit_exceeded", True)
    assert error.response_headers() == {"retry-after": "3"}
    assert "requests_per_s" in error.message
    copy_ = pickle.loads(pickle.dumps(error))
    assert copy_.retry_after_s == 2.2 and copy_.code == "rate_limit_exceeded"
    assert RateDecision(allowed=True).error() is None


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_header(seconds, header):
    assert retry_after_header(seconds) == header


def test_retry_after_header_refuses_infinity():
    with pytest.raises(ValueError):
        retry_after_header(math.inf)


@pytest.mark.parametrize("bad", [{"requests_per_s": 0}, {"tokens_per_minute": -1}, {"requests_per_s": math.nan}])
def test_limits_must_be_positive(bad):
    with pytest.raises(ValueError):
        RateLimits(**bad)


def test_limits_by_key_takes_each_principal_with_any_limit():
    principals = [
        Principal("alice", None, requests_per_s=2),
        Principal("bob", None, tokens_per_minute=100),
        Principal("carol", None),
    ]
    assert limits_by_key(principals) == {
        "alice": RateLimits(requests_per_s=2),
        "bob": RateLimits(tokens_per_minute=100),
    }


events = st.lists(
    st.tuples(st.floats(min_value=0, max_value=3, allow_nan=False), st.integers(min_value=0, max_value=80)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, database=None)
@given(events=events, rps=st.sampled_from([0.5, 1, 3, 10]), tpm=st.sampled_from([60, 100, 600]))
def test_admitted_work_never_exceeds_burst_plus_refill_and_retry_after_is_honest(events, rps, tpm):
    rl = limiter(requests_per_s=rps, tokens_per_minute=tpm)
    now, requests, tokens = 0.0, 0, 0
    for gap, cost in events:
        now += gap
        before = copy.deepcopy(rl)
        decision = rl.check_and_consume("k", cost, now)
        if decision.allowed:
            requests += 1
            tokens += cost
        elif math.isfinite(decision.retry_after_s):
            # Waiting exactly the advertised time is enough for the same request, and a moment less is not.
            later = copy.deepcopy(before)
            assert later.check_and_consume("k", cost, now + decision.retry_after_s).allowed
            if decision.retry_after_s > 1e-3:
                sooner = copy.deepcopy(before)
                assert not sooner.check_and_consume("k", cost, now + decision.retry_after_s * 0.999).allowed
        assert requests <= max(1, rps) + rps * now + 1e-6
        assert tokens <= tpm + tpm / 60 * now + 1e-6
