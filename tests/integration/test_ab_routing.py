"""Sticky A/B routing through the real graph, checked against the pure policy's own answer."""

from __future__ import annotations

from collections import Counter

import httpx

from deployments.routing import RouteQuery, RoutingPolicy

ONE_TOKEN = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def served_by(http: httpx.Client, headers: dict[str, str] | None = None, **body) -> str:
    r = http.post("/v1/chat/completions", json={**ONE_TOKEN, **body}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.headers["x-servefleet-variant"]


def test_keys_split_close_to_weights_and_match_the_policy(running_app, http):
    config = running_app.config
    policy = RoutingPolicy(config.weights, public_model=config.routing.public_model, salt=config.routing.salt)
    keys = [f"user-{i}" for i in range(80)]
    served = {key: served_by(http, {"x-servefleet-user": key}) for key in keys}
    expected = {key: policy.decide(RouteQuery("tiny", sticky_key=key)).variant for key in keys}
    assert served == expected
    counts = Counter(served.values())
    assert set(counts) == {"tiny-v1", "tiny-v2"}
    assert 0.3 < counts["tiny-v1"] / len(keys) < 0.7  # weights are 50/50


def test_a_key_always_lands_on_the_same_variant_streaming_or_not(http):
    for key in ("alice", "bob", "carol"):
        variants = {served_by(http, {"x-servefleet-user": key}) for _ in range(3)}
        with http.stream(
            "POST", "/v1/chat/completions", json={**ONE_TOKEN, "stream": True}, headers={"x-servefleet-user": key}
        ) as r:
            variants.add(r.headers["x-servefleet-variant"])
        assert len(variants) == 1, (key, variants)


def test_body_user_field_is_a_sticky_key_too(http):
    assert len({served_by(http, user="dave") for _ in range(4)}) == 1


def test_override_header_pins_a_variant(http):
    for variant in ("tiny-v1", "tiny-v2"):
        served = {served_by(http, {"x-servefleet-variant": variant, "x-servefleet-user": f"k{i}"}) for i in range(6)}
        assert served == {variant}


def test_unkeyed_traffic_reaches_both_variants(http):
    assert {served_by(http) for _ in range(24)} == {"tiny-v1", "tiny-v2"}
