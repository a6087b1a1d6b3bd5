"""The only place that binds the graph: config in, Ray Serve application out.

The node classes stay plain Python classes; this module turns them into deployments with the options the
config asks for. A Serve config file can name ``serve_app.builder:app_builder`` as its ``import_path`` and pass
the config as ``args``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from deployments.autoscaling_policy import POLICY_PATH, with_engine_signals
from deployments.engine import EngineReplica
from deployments.postprocess import Postprocessor
from deployments.preprocess import Preprocessor
from deployments.rollout import RolloutDriver
from deployments.router import ABRouter
from deployments.sim_engine import SimEngineReplica
from serve_app.config import (
    AutoscalingConfig,
    EngineAutoscalingConfig,
    PoolConfig,
    ServeFleetConfig,
    VariantConfig,
    load_config,
    parse_config,
)
from serve_app.ingress import Ingress, app
from serve_app.metrics import models_of
from serve_app.paths import cache_dir

# The light deployments do no model work; each hop is a few ms, so a replica can hold many requests.
LIGHT_MAX_ONGOING = 512
# Light deployments must never stall model work for CPU; they reserve none so engines can be placed.
LIGHT_ACTOR_OPTIONS = {"num_cpus": 0}

# Where to read the project's config and write its cache, for every process of the graph.
_PASSED_ENV = ("SERVEFLEET_CACHE",)


def _base_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
    env.setdefault("SERVEFLEET_CACHE", str(cache_dir()))
    return env


def engine_env(variant: VariantConfig) -> dict[str, str]:
    """Engine processes' environment: the project's cache for vLLM, no hub look-ups for local models, then
    whatever the variant's config sets (which wins)."""
    env = _base_env()
    env["VLLM_CACHE_ROOT"] = str(cache_dir() / "vllm")
    if variant.is_builtin or os.path.isdir(variant.model):
        env["HF_HUB_OFFLINE"] = "1"
    env.update(variant.env)
    return env


def _scaling(scaling: AutoscalingConfig | None, replicas: int) -> dict[str, Any]:
    """``num_replicas``, or Serve's ``autoscaling_config`` (with the engine-signal policy where asked for)."""
    if scaling is None:
        return {"num_replicas": replicas}
    options: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
    }
    for name in ("look_back_period_s", "metrics_interval_s"):
        if getattr(scaling, name) is not None:
            options[name] = getattr(scaling, name)
    if isinstance(scaling, EngineAutoscalingConfig) and scaling.policy == "engine_signals":
        options["policy"] = {
            "policy_function": POLICY_PATH,
            "policy_kwargs": {
                "target_ongoing_requests": scaling.target_ongoing_requests,
                "target_waiting_requests": scaling.target_waiting_requests,
                "target_kv_cache_usage": scaling.target_kv_cache_usage,
            },
        }
    return {"autoscaling_config": options}


def _autoscaling(variant: VariantConfig) -> dict[str, Any]:
    return _scaling(variant.autoscaling, variant.replicas)


def _pool(pool: PoolConfig) -> dict[str, Any]:
    return _scaling(pool.autoscaling, pool.replicas)


def _engine_class(variant: VariantConfig) -> type:
    cls: type = SimEngineReplica if variant.backend == "sim" else EngineReplica
    scaling = variant.autoscaling
    if scaling is not None and scaling.policy == "engine_signals":
        # Serve's custom-metrics hook (record_autoscaling_stats), read from the engine's stats().
        return with_engine_signals(cls)
    return cls


def build_app(config: ServeFleetConfig) -> Application:
    """Bind ingress → router → preprocess → engine pools → postprocess for ``config``; the router and
    preprocess become deployments of their own only with ``pools.route_and_prepare: deployments`` (else the
    ingress runs them in its replicas, ``serve_app.stages``)."""
    light_actor_options: dict[str, Any] = {**LIGHT_ACTOR_OPTIONS, "runtime_env": {"env_vars": _base_env()}}
    if config.pools.resources:
        light_actor_options["resources"] = dict(config.pools.resources)
    # A replica being replaced (deploy, rollback, scale-down) finishes what it holds before it stops; no request
    # may outlive the proxy's request timeout, so that is also the longest a replica waits. Serve's default of 20 s
    # cut long streams off mid-way, and on a loaded machine even short ones whose hops were slow.
    drain_s = config.server.request_timeout_s
    light = {
        "max_ongoing_requests": LIGHT_MAX_ONGOING,
        "ray_actor_options": light_actor_options,
        "graceful_shutdown_timeout_s": drain_s,
    }
    engines = {
        v.name: serve.deployment(
            _engine_class(v),
            name=f"engine-{v.name}",
            max_ongoing_requests=v.max_ongoing_requests,
            # An engine takes tens of seconds to start; give it time before Serve calls it unhealthy.
            health_check_period_s=10,
            health_check_timeout_s=30,
            graceful_shutdown_timeout_s=drain_s,
            ray_actor_options={
                "num_cpus": v.num_cpus,
                "num_gpus": v.num_gpus,
                "runtime_env": {"env_vars": engine_env(v)},
                **({"resources": dict(v.resources)} if v.resources else {}),
            },
            **_autoscaling(v),
        ).bind(variant=v, stream=config.stream, **({"sim": v.sim} if v.backend == "sim" else {}))
        for v in config.variants
    }
    rollout = (
        None
        if config.rollout is None
        else serve.deployment(RolloutDriver, name="rollout", num_replicas=1, **light).bind(
            rollout=config.rollout, weights=config.weights
        )
    )
    router = preprocess = None
    if config.pools.route_and_prepare == "deployments":
        router = serve.deployment(ABRouter, name="router", **light).bind(
            routing=config.routing, weights=config.weights, models=models_of(config), rollout=rollout
        )
        preprocess = serve.deployment(Preprocessor, name="preprocess", **light, **_pool(config.pools.preprocess)).bind(
            config
        )
    postprocess = serve.deployment(Postprocessor, name="postprocess", **light, **_pool(config.pools.postprocess)).bind()
    ingress_cls = serve.ingress(app)(Ingress)
    return serve.deployment(ingress_cls, name="ingress", **light).bind(
        config=config,
        router=router,
        preprocess=preprocess,
        postprocess=postprocess,
        engines=engines,
        rollout=rollout,
    )


def app_builder(args: Mapping[str, Any]) -> Application:
    """Entry point for a Serve config file: ``args`` is either ``{"config_path": FILE}`` or a whole config."""
    if "config_path" in args:
        return build_app(load_config(args["config_path"]))
    return build_app(parse_config(args, source="serve config args"))
