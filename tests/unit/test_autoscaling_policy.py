"""The engine-signal autoscaling policy: the pure decision, its reading of Serve's context, the replica hook, and
the policy as Serve 2.60's controller runs it (deserialized from its import path, wrapped with bounds and delays).
No Ray cluster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from deployments.autoscaling_policy import (
    KV_CACHE_USAGE,
    POLICY_PATH,
    WAITING,
    EngineSignalPolicy,
    EngineSignalsMixin,
    PoolSnapshot,
    SignalTargets,
    autoscaling_stats,
    desired_replicas,
    snapshot_from_context,
    with_engine_signals,
)
from deployments.sim_engine import SimEngineReplica
from deployments.sim_model import SimEngineConfig
from deployments.types import EngineStats, PreparedRequest, SamplingSpec
from serve_app.config import StreamConfig, VariantConfig

TARGETS = SignalTargets(ongoing_requests=16, waiting_requests=2, kv_cache_usage=0.8)


# ---------------------------------------------------------------------------------------------- the decision


def test_without_engine_reports_it_is_serves_request_count_rule() -> None:
    decision = desired_replicas(PoolSnapshot(current_replicas=2, total_ongoing_requests=48), TARGETS)
    assert decision.signal == "ongoing_requests"
    assert decision.desired_replicas == pytest.approx(3.0)  # 48 requests / 16 per replica
    assert set(decision.by_signal) == {"ongoing_requests"}


def test_waiting_requests_add_replicas_the_request_count_does_not_see() -> None:
    # 20 requests over 2 replicas is under target by count, but 9 of them wait in the engines' queues.
    snapshot = PoolSnapshot(2, 20, waiting={"a": 5, "b": 4}, kv_cache_usage={"a": 0.2, "b": 0.1})
    decision = desired_replicas(snapshot, TARGETS)
    assert decision.signal == "waiting_requests"
    assert decision.desired_replicas == pytest.approx(4.5)
    assert decision.by_signal["ongoing_requests"] == pytest.approx(1.25)


def test_kv_cache_pressure_adds_replicas() -> None:
    # Few, long requests: the KV cache fills long before the batch or the queue.
    snapshot = PoolSnapshot(2, 6, waiting={"a": 0, "b": 0}, kv_cache_usage={"a": 0.95, "b": 0.85})
    decision = desired_replicas(snapshot, TARGETS)
    assert decision.signal == "kv_cache_usage"
    assert decision.desired_replicas == pytest.approx(1.8 / 0.8)


def test_engine_signals_never_take_replicas_below_the_request_count() -> None:
    snapshot = PoolSnapshot(4, 64, waiting={r: 0 for r in "abcd"}, kv_cache_usage={r: 0.05 for r in "abcd"})
    decision = desired_replicas(snapshot, TARGETS)
    assert decision.signal == "ongoing_requests"
    assert decision.desired_replicas == pytest.approx(4.0)


def test_idle_pool_asks_for_nothing() -> None:
    snapshot = PoolSnapshot(3, 0, waiting={r: 0 for r in "abc"}, kv_cache_usage={r: 0 for r in "abc"})
    assert desired_replicas(snapshot, TARGETS).desired_replicas == 0


def test_replicas_that_have_not_reported_count_at_the_reporters_mean() -> None:
    # Four replicas, two still starting: the two that report wait 4 each, so the pool is read as 16 waiting.
    snapshot = PoolSnapshot(4, 10, waiting={"a": 4, "b": 4}, kv_cache_usage={"a": 0.1, "b": 0.1})
    assert desired_replicas(snapshot, TARGETS).by_signal["waiting_requests"] == pytest.approx(8.0)


def test_a_replica_counts_only_with_both_signals_and_out_of_range_values_are_clamped() -> None:
    snapshot = PoolSnapshot(2, 0, waiting={"a": -3, "b": 50}, kv_cache_usage={"a": 7.0})
    decision = desired_replicas(snapshot, TARGETS)
    # Only "a" reported both; its negative queue reads as 0 and its KV use as 100%.
    assert decision.by_signal["waiting_requests"] == 0
    assert decision.by_signal["kv_cache_usage"] == pytest.approx(2 * 1.0 / 0.8)


def test_targets_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SignalTargets(16, 0, 0.8)


# ---------------------------------------------------------------------------------------------- Serve's context


def make_context(
    *,
    current: int,
    ongoing: float,
    metrics: dict[str, dict[Any, float]] | None,
    running: list[Any] | None = None,
    target: int | None = None,
    config: Any = None,
    policy_state: dict[str, Any] | None = None,
) -> Any:
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

    return AutoscalingContext(
        deployment_id=DeploymentID(name="engine-sim-a", app_name="servefleet"),
        deployment_name="engine-sim-a",
        app_name="servefleet",
        current_num_replicas=current,
        target_num_replicas=current if target is None else target,
        running_replicas=list(running if running is not None else range(current)),
        total_num_requests=ongoing,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics=None,
        capacity_adjusted_min_replicas=config.min_replicas if config else 1,
        capacity_adjusted_max_replicas=config.max_replicas if config else 10,
        policy_state=policy_state or {},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=time.time(),
        config=config,
    )


def test_snapshot_reads_only_the_running_replicas_engine_metrics() -> None:
    ctx = make_context(
        current=2,
        ongoing=12,
        running=["r1", "r2"],
        metrics={WAITING: {"r1": 3.0, "r2": 1.0, "gone": 40.0}, KV_CACHE_USAGE: {"r1": 0.5, "r2": 0.25}, "x": {}},
    )
    snapshot = snapshot_from_context(ctx)
    assert snapshot == PoolSnapshot(2, 12.0, waiting={"r1": 3.0, "r2": 1.0}, kv_cache_usage={"r1": 0.5, "r2": 0.25})


def test_policy_returns_the_decision_and_records_which_signal_drove_it() -> None:
    policy = EngineSignalPolicy(target_ongoing_requests=16, target_waiting_requests=2, target_kv_cache_usage=0.8)
    ctx = make_context(
        current=2, ongoing=20, metrics={WAITING: {0: 6.0, 1: 6.0}, KV_CACHE_USAGE: {0: 0.1, 1: 0.1}}, policy_state={}
    )
    desired, state = policy(ctx)
    assert desired == pytest.approx(6.0)
    assert state["servefleet"]["signal"] == "waiting_requests"


def test_policy_with_no_custom_metrics_falls_back_to_requests() -> None:
    policy = EngineSignalPolicy(target_ongoing_requests=4, target_waiting_requests=2, target_kv_cache_usage=0.8)
    desired, state = policy(make_context(current=2, ongoing=12, metrics=None))
    assert desired == pytest.approx(3.0)
    assert state["servefleet"]["signal"] == "ongoing_requests"


def serve_policy(**config: Any) -> tuple[Any, Any]:
    """The policy exactly as Serve 2.60's controller builds it from a deployment's autoscaling_config: the class
    cloudpickled from its import path, instantiated with policy_kwargs, wrapped with delays and factors."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig

    autoscaling = AutoscalingConfig(
        **{
            "min_replicas": 1,
            "max_replicas": 4,
            "target_ongoing_requests": 1000,
            "upscale_delay_s": 0,
            "downscale_delay_s": 0,
            **config,
            "policy": {
                "policy_function": POLICY_PATH,
                "policy_kwargs": {
                    "target_ongoing_requests": 1000,
                    "target_waiting_requests": 2,
                    "target_kv_cache_usage": 0.8,
                },
            },
        }
    )
    return autoscaling, _apply_autoscaling_config(_resolve_policy_callable(autoscaling.policy))


def test_serve_runs_the_policy_from_its_import_path_and_scales_up_on_waiting() -> None:
    config, policy = serve_policy()
    ctx = make_context(
        current=1, ongoing=10, metrics={WAITING: {0: 8.0}, KV_CACHE_USAGE: {0: 0.1}}, config=config, target=1
    )
    replicas, state = policy(ctx)
    # Serve's own rule would keep 1 replica (10 requests against a target of 1000); the queue asks for 4.
    assert replicas == 4
    assert state["servefleet"]["signal"] == "waiting_requests"


def test_serve_wrapper_holds_the_decision_until_the_upscale_delay_passes() -> None:
    config, policy = serve_policy(upscale_delay_s=3600)
    ctx = make_context(current=1, ongoing=10, metrics={WAITING: {0: 8.0}, KV_CACHE_USAGE: {0: 0.1}}, config=config)
    replicas, _ = policy(ctx)
    assert replicas == 1


def test_serve_scales_down_an_idle_pool() -> None:
    config, policy = serve_policy()
    metrics = {WAITING: {i: 0.0 for i in range(3)}, KV_CACHE_USAGE: {i: 0.0 for i in range(3)}}
    replicas, _ = policy(make_context(current=3, ongoing=0, metrics=metrics, config=config))
    assert replicas < 3


# ---------------------------------------------------------------------------------------------- replica side


def test_autoscaling_stats_forwards_only_the_engine_signals() -> None:
    extra = {WAITING: 3, KV_CACHE_USAGE: 0.25, "num_requests_running": 7.0, "simulated": 1.0}
    assert autoscaling_stats(extra) == {WAITING: 3.0, KV_CACHE_USAGE: 0.25}
    assert autoscaling_stats({}) == {}


def test_sim_engine_reports_its_queue_and_kv_use_through_serves_hook() -> None:
    cls = with_engine_signals(SimEngineReplica)
    assert issubclass(cls, SimEngineReplica) and issubclass(cls, EngineSignalsMixin)
    assert cls.__name__ == "SimEngineReplica"
    assert with_engine_signals(cls) is cls
    variant = VariantConfig(name="sim-a", model="builtin:tiny-v1", weight=100, engine={"max_model_len": 512})
    # Slow steps and a batch of 1: of three requests, one runs and two wait.
    replica = cls(variant, StreamConfig(), sim=SimEngineConfig(base_step_ms=200, max_num_seqs=1))

    async def scenario() -> dict[str, float]:
        requests = [
            PreparedRequest(f"r{i}", "sim-a", "completion", [1, 2, 3], SamplingSpec(max_tokens=50)) for i in range(3)
        ]
        tasks = [asyncio.create_task(replica.generate(r)) for r in requests]
        await asyncio.sleep(0.3)
        stats = await replica.record_autoscaling_stats()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stats

    stats = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert stats[WAITING] == 2.0
    assert 0 < stats[KV_CACHE_USAGE] < 1


def test_an_engine_without_the_signals_reports_nothing_and_is_scaled_on_requests() -> None:
    class QuietEngine:
        async def stats(self) -> EngineStats:
            return EngineStats(variant="v", running_requests=3, healthy=True, extra={})

    replica = with_engine_signals(QuietEngine)()
    assert asyncio.run(replica.record_autoscaling_stats()) == {}
