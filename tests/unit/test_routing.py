import random
from collections import Counter

import pytest

from deployments.router import validate_weights
from deployments.routing import (
    NoRoutableVariant,
    RouteQuery,
    RoutingPolicy,
    UnknownVariant,
    sticky_point,
)


def policy(weights=None):
    return RoutingPolicy(weights or {"v1": 70, "v2": 30}, public_model="tiny", salt="s")


def test_same_key_always_lands_on_the_same_variant():
    p = policy()
    for key in (f"user-{i}" for i in range(200)):
        first = p.decide(RouteQuery("tiny", sticky_key=key))
        assert first.reason == "sticky"
        assert all(p.decide(RouteQuery("tiny", sticky_key=key)) == first for _ in range(3))


def test_sticky_point_is_stable_across_policy_instances_and_salt_dependent():
    assert sticky_point("alice", "s") == sticky_point("alice", "s")
    assert sticky_point("alice", "s") != sticky_point("alice", "t")
    assert 0 <= sticky_point("alice", "s") < 1


def test_many_keys_split_close_to_the_weights():
    p = policy()
    counts = Counter(p.decide(RouteQuery("tiny", sticky_key=f"k{i}")).variant for i in range(20000))
    assert abs(counts["v1"] / 20000 - 0.7) < 0.02


def test_keyless_requests_split_by_weight():
    p = policy()
    rng = random.Random(7)
    counts = Counter(p.decide(RouteQuery("tiny"), rng).variant for _ in range(20000))
    assert abs(counts["v2"] / 20000 - 0.3) < 0.02


def test_override_beats_model_and_key():
    p = policy()
    decision = p.decide(RouteQuery("v1", sticky_key="k", override="v2"))
    assert (decision.variant, decision.reason) == ("v2", "override")


def test_variant_name_as_model_pins_it():
    decision = policy().decide(RouteQuery("v2", sticky_key="k"))
    assert (decision.variant, decision.reason) == ("v2", "model")


def test_unknown_names_are_refused_with_the_field():
    with pytest.raises(UnknownVariant) as info:
        policy().decide(RouteQuery("gpt-4"))
    assert info.value.field == "model"
    with pytest.raises(UnknownVariant) as info:
        policy().decide(RouteQuery("tiny", override="v9"))
    assert info.value.field == "override"


def test_zero_weight_variant_gets_no_routed_traffic_but_can_be_pinned():
    p = policy({"v1": 100, "v2": 0})
    assert {p.decide(RouteQuery("tiny", sticky_key=f"k{i}")).variant for i in range(500)} == {"v1"}
    assert p.decide(RouteQuery("v2")).variant == "v2"


def test_all_zero_weights_cannot_route():
    with pytest.raises(NoRoutableVariant):
        policy({"v1": 0, "v2": 0}).decide(RouteQuery("tiny", sticky_key="k"))


def test_weight_change_moves_only_keys_near_the_boundary():
    before, after = policy({"v1": 50, "v2": 50}), policy({"v1": 60, "v2": 40})
    moved = sum(
        before.decide(RouteQuery("tiny", sticky_key=f"k{i}")).variant
        != after.decide(RouteQuery("tiny", sticky_key=f"k{i}")).variant
        for i in range(10000)
    )
    assert 0.07 < moved / 10000 < 0.13  # only the 10% between the old and new boundary


def test_validate_weights_fills_missing_and_checks_sum():
    assert validate_weights({"v1": 100}, ["v1", "v2"]) == {"v1": 100.0, "v2": 0.0}
    with pytest.raises(ValueError, match="unknown"):
        validate_weights({"v3": 100}, ["v1", "v2"])
    with pytest.raises(ValueError, match="sum to 100"):
        validate_weights({"v1": 10}, ["v1", "v2"])
