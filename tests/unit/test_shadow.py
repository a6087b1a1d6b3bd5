import pytest
from pydantic import ValidationError

from deployments.routing import RouteQuery, RoutingPolicy
from deployments.shadow import AnswerSummary, ShadowConfig, compare, shadow_target, should_shadow

IDS = [f"req-{i:06d}" for i in range(20_000)]


def test_sampling_is_deterministic_per_request_id():
    assert [should_shadow(i, 0.3) for i in IDS[:500]] == [should_shadow(i, 0.3) for i in IDS[:500]]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_sampled_share_matches_the_fraction(fraction):
    share = sum(should_shadow(i, fraction) for i in IDS) / len(IDS)
    assert abs(share - fraction) < 0.01


def test_edges_and_nesting():
    assert not any(should_shadow(i, 0.0) for i in IDS[:1000])
    assert all(should_shadow(i, 1.0) for i in IDS[:1000])
    # Raising the fraction only adds requests: a sampled request stays sampled.
    small = {i for i in IDS if should_shadow(i, 0.05)}
    large = {i for i in IDS if should_shadow(i, 0.2)}
    assert small < large
    with pytest.raises(ValueError):
        should_shadow("r", 1.5)


def test_salt_changes_the_sample():
    a = {i for i in IDS[:5000] if should_shadow(i, 0.1, salt="a")}
    b = {i for i in IDS[:5000] if should_shadow(i, 0.1, salt="b")}
    assert a != b


def test_sample_does_not_follow_the_routing_split():
    # With the same keys, routing's sticky hash and the shadow hash must be independent: copies of requests
    # routed to v2 are about as frequent as of those routed to v1.
    policy = RoutingPolicy({"v1": 50, "v2": 50}, public_model="tiny", salt="servefleet")
    routed = {i: policy.decide(RouteQuery("tiny", sticky_key=i)).variant for i in IDS}
    config = ShadowConfig(variant="v3", fraction=0.2)
    for variant in ("v1", "v2"):
        keys = [i for i, v in routed.items() if v == variant]
        share = sum(shadow_target(i, variant, config) is not None for i in keys) / len(keys)
        assert abs(share - 0.2) < 0.02


def test_target_is_the_shadow_variant_unless_it_already_served():
    config = ShadowConfig(variant="v2", fraction=1.0)
    assert shadow_target("r1", "v1", config) == "v2"
    assert shadow_target("r1", "v2", config) is None
    assert shadow_target("r1", "v1", ShadowConfig(variant="v2", fraction=0.0)) is None


def test_config_validation():
    for bad in ({"variant": "v2", "fraction": 1.5}, {"variant": "", "fraction": 0.1}, {"variant": "v2", "x": 1}):
        with pytest.raises(ValidationError):
            ShadowConfig.model_validate(bad)


def test_compare_identical_answers():
    answer = AnswerSummary("hello world", 3, 0.5, "stop")
    result = compare(answer, answer)
    assert result.exact_match and result.same_finish_reason
    assert (result.length_delta_tokens, result.latency_delta_s, result.latency_ratio) == (0, 0.0, 1.0)


def test_compare_different_answers_is_shadow_minus_primary():
    primary = AnswerSummary("hello world", 10, 0.5, "stop")
    shadow = AnswerSummary("hello there, world", 16, 0.75, "length")
    result = compare(primary, shadow)
    assert not result.exact_match and not result.same_finish_reason
    assert result.length_delta_tokens == 6
    assert result.latency_delta_s == pytest.approx(0.25)
    assert result.latency_ratio == pytest.approx(1.5)
    assert compare(shadow, primary).length_delta_tokens == -6


def test_compare_with_an_instant_primary_has_no_ratio():
    result = compare(AnswerSummary("", 0, 0.0), AnswerSummary("", 0, 0.1))
    assert result.latency_ratio is None and result.exact_match
