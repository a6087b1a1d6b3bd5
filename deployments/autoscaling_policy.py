"""Autoscaling an engine pool on the engines' own load signals, not only on request counts.

Serve's default rule sizes a pool by requests per replica. For an LLM engine that count misses the two ways a
continuously batching engine runs out of room: its **queue** (requests the replica has accepted but the
scheduler has not admitted to the batch: time to first token grows while the request count looks fine) and
its **KV cache** (long prompts fill it long before the batch is full; past it vLLM preempts and recomputes).

The decision is a pure function of a snapshot, ``desired_replicas(snapshot, targets)``: each signal, summed
over the pool, divided by what one replica should carry, says how many replicas that signal wants; the pool
gets the largest. Requests per replica always count, so the engine signals only ever add replicas where the
request count under-reads the load, and with no engine reports at all (an engine that does not report, or
replicas still starting) the rule is exactly Serve's own.

Signals travel through Ray Serve 2.60's custom autoscaling metrics: a replica class with an async
``record_autoscaling_stats() -> dict[str, float]`` has it called by Serve every few seconds, and the
controller hands the per-replica values, averaged over ``look_back_period_s``, to the policy as
``AutoscalingContext.aggregated_metrics``. ``EngineSignalsMixin`` implements that method on top of the
engine's existing ``stats()``: it forwards the ``EngineStats.extra`` entries named ``num_requests_waiting``
and ``kv_cache_usage_perc`` (vLLM's metric names; KV use as a fraction in [0, 1]). The simulated engine fills
them in; an engine whose ``stats().extra`` lacks them is scaled on requests alone.

``EngineSignalPolicy`` is what the builder names in the deployment's ``autoscaling_config.policy``; Serve wraps
it with the usual delays, scaling factors and min/max bounds. It imports nothing from Ray at module level.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ENGINE_SIGNALS",
    "KV_CACHE_USAGE",
    "POLICY_PATH",
    "WAITING",
    "EngineSignalPolicy",
    "EngineSignalsMixin",
    "PoolSnapshot",
    "ScalingDecision",
    "SignalTargets",
    "autoscaling_stats",
    "desired_replicas",
    "snapshot_from_context",
    "with_engine_signals",
]

WAITING = "num_requests_waiting"
KV_CACHE_USAGE = "kv_cache_usage_perc"
ENGINE_SIGNALS = (WAITING, KV_CACHE_USAGE)
POLICY_PATH = "deployments.autoscaling_policy:EngineSignalPolicy"
STATE_KEY = "servefleet"  # where the policy leaves its last decision in Serve's policy state


@dataclass(frozen=True, slots=True)
class SignalTargets:
    """What one replica should carry, per signal."""

    ongoing_requests: float
    waiting_requests: float
    kv_cache_usage: float

    def __post_init__(self) -> None:
        if min(self.ongoing_requests, self.waiting_requests, self.kv_cache_usage) <= 0:
            raise ValueError("targets must be positive")


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """The pool as the controller sees it: running replicas, ongoing requests over the whole pool (queued at
    handles and running in replicas), and the engine signals of the replicas that reported them."""

    current_replicas: int
    total_ongoing_requests: float
    waiting: Mapping[Hashable, float] = field(default_factory=dict)
    kv_cache_usage: Mapping[Hashable, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    desired_replicas: float  # unrounded: Serve applies scaling factors, rounds up and bounds it
    signal: str  # the signal that asked for the most: "ongoing_requests", "waiting_requests", "kv_cache_usage"
    by_signal: dict[str, float]


def desired_replicas(snapshot: PoolSnapshot, targets: SignalTargets) -> ScalingDecision:
    """Replicas the pool needs: the largest of what each signal asks for.

    - requests: ``total_ongoing_requests / targets.ongoing_requests`` (Serve's default rule);
    - queue: ``sum(waiting) / targets.waiting_requests``;
    - KV cache: ``sum(kv_cache_usage) / targets.kv_cache_usage``.

    Engine sums cover the replicas that reported; replicas that did not (still starting) are counted at the
    reporters' mean, so a half-reported pool is not under-read. A replica counts for the engine signals only
    if it reported both of them.
    """
    by_signal = {"ongoing_requests": max(snapshot.total_ongoing_requests, 0.0) / targets.ongoing_requests}
    reporters = [r for r in snapshot.waiting if r in snapshot.kv_cache_usage]
    if reporters and snapshot.current_replicas > 0:
        scale = max(snapshot.current_replicas, len(reporters)) / len(reporters)
        waiting = sum(max(snapshot.waiting[r], 0.0) for r in reporters) * scale
        kv = sum(min(max(snapshot.kv_cache_usage[r], 0.0), 1.0) for r in reporters) * scale
        by_signal["waiting_requests"] = waiting / targets.waiting_requests
        by_signal["kv_cache_usage"] = kv / targets.kv_cache_usage
    signal = max(by_signal, key=lambda name: by_signal[name])
    return ScalingDecision(desired_replicas=by_signal[signal], signal=signal, by_signal=by_signal)


class _Context(Protocol):
    """The part of ``ray.serve.config.AutoscalingContext`` the policy reads."""

    current_num_replicas: int
    running_replicas: list[Any]
    policy_state: dict[str, Any]

    @property
    def total_num_requests(self) -> float: ...

    @property
    def aggregated_metrics(self) -> dict[str, dict[Any, float]] | None: ...


def snapshot_from_context(ctx: _Context) -> PoolSnapshot:
    """The snapshot of a Serve ``AutoscalingContext``: engine signals of the running replicas only."""
    metrics = ctx.aggregated_metrics or {}
    running = set(ctx.running_replicas)

    def signal(name: str) -> dict[Hashable, float]:
        return {r: float(v) for r, v in (metrics.get(name) or {}).items() if r in running}

    return PoolSnapshot(
        current_replicas=ctx.current_num_replicas,
        total_ongoing_requests=float(ctx.total_num_requests),
        waiting=signal(WAITING),
        kv_cache_usage=signal(KV_CACHE_USAGE),
    )


class EngineSignalPolicy:
    """Serve's custom autoscaling policy for engine pools (``policy_function`` names this class; Serve makes
    one instance per deployment with ``policy_kwargs`` and calls it every control-loop tick)."""

    def __init__(
        self, *, target_ongoing_requests: float, target_waiting_requests: float, target_kv_cache_usage: float
    ) -> None:
        self.targets = SignalTargets(target_ongoing_requests, target_waiting_requests, target_kv_cache_usage)

    def __call__(self, ctx: _Context) -> tuple[float, dict[str, Any]]:
        if ctx.current_num_replicas == 0:  # Serve's cold-start path decides before any policy runs
            return 0.0, dict(ctx.policy_state)
        decision = desired_replicas(snapshot_from_context(ctx), self.targets)
        state = dict(ctx.policy_state)
        state[STATE_KEY] = {"signal": decision.signal, **{k: round(v, 3) for k, v in decision.by_signal.items()}}
        return decision.desired_replicas, state


# ---------------------------------------------------------------------------------------------- replica side


def autoscaling_stats(extra: Mapping[str, float]) -> dict[str, float]:
    """What a replica reports to Serve's autoscaler: the engine signals found in ``EngineStats.extra``."""
    return {name: float(extra[name]) for name in ENGINE_SIGNALS if name in extra}


class _HasStats(Protocol):
    async def stats(self) -> Any: ...


class EngineSignalsMixin:
    """Gives an engine replica class Serve's ``record_autoscaling_stats`` hook, read from its ``stats()``."""

    async def record_autoscaling_stats(self: _HasStats) -> dict[str, float]:
        stats = await self.stats()
        return autoscaling_stats(stats.extra)


def with_engine_signals(cls: type) -> type:
    """``cls`` with ``EngineSignalsMixin`` in front (same name, so logs and actor class names read the same)."""
    if issubclass(cls, EngineSignalsMixin):
        return cls
    return type(cls.__name__, (EngineSignalsMixin, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})
