"""What the builder asks Serve for, read back through Serve's own graph walk (no cluster): placement resources,
per-pool autoscaling, and the engine-signal policy with the replica hook it needs."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.autoscaling_policy import POLICY_PATH, EngineSignalsMixin
from serve_app.builder import build_app
from serve_app.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, parse_config

SIM = {"model": "builtin:tiny-v1", "backend": "sim", "num_cpus": 0, "engine": {"max_model_len": 512}}


def deployments(config: Any) -> dict[str, Any]:
    from ray.serve._private.build_app import build_app as walk

    return {d.name: d for d in walk(build_app(config), name=config.app_name).deployments}


def scaling(deployment: Any) -> Any:
    return deployment._deployment_config.autoscaling_config


def test_default_config_is_unchanged_fixed_replicas_no_resources_no_policy() -> None:
    built = deployments(load_config(DEFAULT_CONFIG_PATH, environ={}))
    for name, deployment in built.items():
        assert "resources" not in deployment.ray_actor_options, name
        assert scaling(deployment) is None, name
        assert not issubclass(deployment.func_or_class, EngineSignalsMixin), name
    # The ingress routes and preprocesses in its own replicas: no router or preprocess deployment, no hop.
    assert set(built) == {"ingress", "postprocess", "engine-tiny-v1", "engine-tiny-v2"}
    assert built["postprocess"].num_replicas == 1


def test_router_and_preprocess_become_deployments_when_asked() -> None:
    config = parse_config(
        {"pools": {"route_and_prepare": "deployments"}, "variants": [{"name": "a", "weight": 100, **SIM}]},
        environ={},
    )
    built = deployments(config)
    assert set(built) == {"ingress", "router", "preprocess", "postprocess", "engine-a"}
    assert built["preprocess"].num_replicas == 1


def test_a_preprocess_pool_without_its_deployment_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"pools\.route_and_prepare: deployments"):
        parse_config({"pools": {"preprocess": {"replicas": 2}}, "variants": [{"name": "a", "weight": 100, **SIM}]})


def test_engine_resources_and_light_pool_placement_reach_ray_actor_options() -> None:
    config = parse_config(
        {
            "pools": {"resources": {"head": 0.01}, "route_and_prepare": "deployments"},
            "variants": [{"name": "a", "weight": 100, **SIM, "resources": {"engine": 1}}],
        },
        environ={},
    )
    built = deployments(config)
    assert built["engine-a"].ray_actor_options["resources"] == {"engine": 1}
    assert built["engine-a"].ray_actor_options["num_cpus"] == 0
    for light in ("ingress", "router", "preprocess", "postprocess"):
        options = built[light].ray_actor_options
        assert options["resources"] == {"head": 0.01} and options["num_cpus"] == 0, light


def test_preprocess_and_postprocess_scale_on_their_own() -> None:
    config = parse_config(
        {
            "pools": {
                "route_and_prepare": "deployments",
                "preprocess": {"autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}},
                "postprocess": {"replicas": 3},
            },
            "variants": [{"name": "a", "weight": 100, **SIM}],
        },
        environ={},
    )
    built = deployments(config)
    pre = scaling(built["preprocess"])
    assert (pre.min_replicas, pre.max_replicas, pre.target_ongoing_requests) == (1, 4, 8)
    assert pre.policy.is_default_policy_function()
    assert scaling(built["postprocess"]) is None and built["postprocess"].num_replicas == 3
    assert scaling(built["ingress"]) is None and scaling(built["router"]) is None


def engine_signals_variant(**autoscaling: Any) -> dict[str, Any]:
    return {
        "name": "a",
        "weight": 100,
        **SIM,
        "autoscaling": {
            "policy": "engine_signals",
            "min_replicas": 1,
            "max_replicas": 3,
            "target_ongoing_requests": 32,
            "target_waiting_requests": 4,
            "target_kv_cache_usage": 0.7,
            **autoscaling,
        },
    }


def test_engine_signals_policy_is_wired_with_its_targets_and_the_replica_hook() -> None:
    config = parse_config(
        {"variants": [engine_signals_variant(look_back_period_s=5, metrics_interval_s=1)]}, environ={}
    )
    engine = deployments(config)["engine-a"]
    options = scaling(engine)
    assert options.policy.policy_function == POLICY_PATH
    assert options.policy.policy_kwargs == {
        "target_ongoing_requests": 32,
        "target_waiting_requests": 4,
        "target_kv_cache_usage": 0.7,
    }
    assert (options.look_back_period_s, options.metrics_interval_s) == (5, 1)
    # Serve only collects custom metrics from a class with record_autoscaling_stats.
    assert issubclass(engine.func_or_class, EngineSignalsMixin)
    assert hasattr(engine.func_or_class, "record_autoscaling_stats")


def test_ongoing_requests_policy_keeps_serves_default_and_the_plain_class() -> None:
    config = parse_config({"variants": [engine_signals_variant(policy="ongoing_requests")]}, environ={})
    engine = deployments(config)["engine-a"]
    assert scaling(engine).policy.is_default_policy_function()
    assert not issubclass(engine.func_or_class, EngineSignalsMixin)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"look_back_period_s": 1, "metrics_interval_s": 2}, "look_back_period_s must be greater"),
        ({"target_kv_cache_usage": 1.5}, "target_kv_cache_usage"),
        ({"policy": "kv_only"}, "policy"),
    ],
)
def test_bad_engine_autoscaling_is_refused_naming_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"variants": [engine_signals_variant(**section)]}, environ={})


def test_light_pools_refuse_the_engine_only_policy() -> None:
    with pytest.raises(ConfigError, match="policy"):
        parse_config(
            {
                "pools": {
                    "route_and_prepare": "deployments",
                    "preprocess": {"autoscaling": {"policy": "engine_signals"}},
                },
                "variants": [{"name": "a", "weight": 100, **SIM}],
            },
            environ={},
        )


def test_every_replica_drains_its_requests_for_as_long_as_a_request_may_last() -> None:
    config = parse_config(
        {
            "server": {"request_timeout_s": 120},
            "limits": {"request_timeout_s": 100},
            "pools": {"route_and_prepare": "deployments"},
            "variants": [{"name": "a", "weight": 100, **SIM}],
        },
        environ={},
    )
    built = deployments(config)
    assert set(built) >= {"ingress", "router", "preprocess", "postprocess", "engine-a"}
    for name, deployment in built.items():
        assert deployment._deployment_config.graceful_shutdown_timeout_s == 120, name
