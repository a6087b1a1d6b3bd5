import pytest

from deployments.types import PreparedRequest, SamplingSpec
from serve_app.admission import AdmissionConfig, EngineLoad
from serve_app.auth import ANONYMOUS, Authenticator, Forbidden, KeyEntry, hash_token
from serve_app.guard import RequestGuard
from serve_app.limits import LimitExceeded, LimitsConfig
from serve_app.ratelimit import RateLimited

TOKEN = "sf-" + "a" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def prepared(variant: str = "v1", prompt_tokens: int = 10, max_tokens: int = 20) -> PreparedRequest:
    return PreparedRequest("req-1", variant, "chat", list(range(prompt_tokens)), SamplingSpec(max_tokens=max_tokens))


def guard(*, tokens_per_minute: int | None = None, admission: AdmissionConfig | None = None, **limits) -> tuple:
    entry = KeyEntry(name="team", key_hash=hash_token(TOKEN), variants=["v1"], tokens_per_minute=tokens_per_minute)
    auth = Authenticator([entry])
    clock = Clock()
    g = RequestGuard(auth, LimitsConfig(**limits), admission or AdmissionConfig(), ["v1", "v2"], clock=clock)
    return g, auth.authenticate(f"Bearer {TOKEN}"), clock


def test_a_key_may_not_use_a_variant_it_was_not_granted():
    g, principal, _ = guard()
    with pytest.raises(Forbidden):
        g.admit(principal, prepared("v2"))
    assert g.admit(principal, prepared("v1")).cost == 30


def test_prompt_token_limit_names_the_field():
    g, principal, _ = guard(max_prompt_tokens=5)
    with pytest.raises(LimitExceeded) as info:
        g.admit(principal, prepared(prompt_tokens=6))
    assert info.value.param == "messages" and info.value.status_code == 400


def test_token_budget_refuses_with_retry_after_and_refunds_unused_tokens():
    g, principal, _ = guard(tokens_per_minute=60)
    first = g.admit(principal, prepared(prompt_tokens=10, max_tokens=20))  # 30 of 60
    g.admit(principal, prepared(prompt_tokens=10, max_tokens=20))  # 60 of 60
    with pytest.raises(RateLimited) as info:
        g.admit(principal, prepared(prompt_tokens=10, max_tokens=20))
    assert info.value.status_code == 429
    assert int(info.value.response_headers()["retry-after"]) >= 1
    g.release(first, output_tokens=0)  # 20 reserved tokens were never generated
    assert g.admit(principal, prepared(prompt_tokens=0, max_tokens=20)).cost == 20


def test_saturated_pool_refuses_a_key_over_its_share_and_gives_back_the_rate_charge():
    config = AdmissionConfig(max_waiting=1)
    g, principal, _ = guard(tokens_per_minute=100, admission=config)
    held = g.admit(principal, prepared())  # 30 in flight for the only key
    g.update_load({"v1": EngineLoad(waiting_requests=5, kv_cache_usage=0.5, running_requests=4)})
    with pytest.raises(RateLimited):
        g.admit(principal, prepared())
    g.release(held, output_tokens=20)
    g.update_load({})
    # The refused request's 30 tokens were refunded: 30 (held, 20 used) + 30 + 30 fits in 100.
    g.admit(principal, prepared())
    g.admit(principal, prepared())


def test_release_is_idempotent():
    g, principal, _ = guard()
    ticket = g.admit(principal, prepared())
    g.release(ticket, 5)
    g.release(ticket, 5)
    assert ticket.released


def test_anonymous_caller_passes_when_auth_is_off():
    g = RequestGuard(Authenticator([], enabled=False), LimitsConfig(), AdmissionConfig(), ["v1"])
    assert g.admit(ANONYMOUS, prepared()).key == ANONYMOUS.name
