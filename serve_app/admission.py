"""Admission control: when an engine pool is saturated, decide which new requests get in, before any is queued.

A saturated engine (a queue building up, or a KV cache about to preempt) only gets slower for everyone if more
work is piled on; a quick 429 with a Retry-After lets clients back off instead. Refusing everyone would punish
light users for a heavy one's burst, so under saturation a request is admitted only while its key holds less than
a fair share of the token cost this ingress has in flight: the key hogging the pool is the one told to wait.

One ``AdmissionController`` per variant, because saturation and fair shares are properties of one engine pool.
It is pure: the caller brings the load snapshot and reports ``start``/``finish`` of every admitted request.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import ServeFleetError
from serve_app.ratelimit import RateLimited

__all__ = ["AdmissionConfig", "AdmissionController", "AdmissionDecision", "EngineLoad", "Saturated"]

ADMITTED_DISABLED = "disabled"
ADMITTED_LOAD_UNKNOWN = "load_unknown"
ADMITTED_NOT_SATURATED = "not_saturated"
ADMITTED_UNDER_SHARE = "under_fair_share"
REFUSED_OVER_SHARE = "over_fair_share"


class AdmissionConfig(BaseModel):
    """Thresholds at which an engine pool counts as saturated, and how Retry-After is estimated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True,
        description="Refuse over-share requests to a saturated pool. Admits everything while the pool has room.",
    )
    max_waiting: int = Field(
        default=16,
        ge=1,
        description=(
            "The pool is saturated once this many requests wait in the engine's queue (vLLM's "
            "num_requests_waiting). A few waiting is normal: they join the batch at the next step."
        ),
    )
    max_kv_cache_usage: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="The pool is saturated once this fraction of KV cache is in use (vLLM's kv_cache_usage_perc).",
    )
    batch_turnover_s: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Rough time for the engine to finish the requests it is running. Retry-After is this times one plus "
            "the number of batches queued ahead (waiting / running)."
        ),
    )
    max_retry_after_s: float = Field(
        default=30, ge=1, description="Cap on the Retry-After estimate, so clients are never told to go away long."
    )


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One variant's engine load, as its replicas last reported it (summed over replicas; KV use the maximum)."""

    waiting_requests: int
    kv_cache_usage: float
    """Fraction of KV-cache blocks in use, 0 to 1."""
    running_requests: int


class Saturated(RateLimited):
    """429: the pool is saturated and this key already has its share in flight."""

    default_code = "overloaded"


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    admitted: bool
    retry_after_s: float = 0.0
    reason: str = ""
    """Why: disabled, load_unknown, not_saturated, under_fair_share, or over_fair_share (refused)."""

    def error(self) -> ServeFleetError | None:
        """The exception the ingress raises for a refusal; None when admitted."""
        if self.admitted:
            return None
        return Saturated(
            "the server is at capacity and this API key already has its share of it in use; retry shortly",
            retry_after_s=self.retry_after_s,
        )


class AdmissionController:
    """Decides admission for one variant's pool and tracks in-flight token cost per key.

    ``decide`` does not record anything; call ``start(key, cost)`` when an admitted request is handed to the
    engine and ``finish(key, cost)`` with the same cost when it ends for any reason (done, error, disconnect).
    """

    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        self._in_flight: dict[str, int] = {}
        self._total = 0

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    @property
    def total_in_flight(self) -> int:
        return self._total

    @property
    def active_keys(self) -> int:
        """Keys with work in flight (the only ones held in memory)."""
        return len(self._in_flight)

    def saturated(self, load: EngineLoad) -> bool:
        return load.waiting_requests >= self.config.max_waiting or load.kv_cache_usage >= self.config.max_kv_cache_usage

    def fair_share(self, key: str) -> float:
        """The in-flight token cost each active key is entitled to, counting ``key`` as active."""
        sharers = len(self._in_flight) + (0 if key in self._in_flight else 1)
        return self._total / sharers

    def decide(self, key: str, load: EngineLoad | None) -> AdmissionDecision:
        """Admit or refuse ``key``'s next request given the pool's ``load`` (None when no snapshot is known yet).

        With no snapshot it admits: refusing on no evidence would turn a metrics hiccup into an outage. Under
        saturation, a key with nothing in flight here is still refused when nothing at all is in flight here:
        the pool is full of other ingresses' work, and there is no share of this one's to hand out.
        """
        if not self.config.enabled:
            return AdmissionDecision(admitted=True, reason=ADMITTED_DISABLED)
        if load is None:
            return AdmissionDecision(admitted=True, reason=ADMITTED_LOAD_UNKNOWN)
        if not self.saturated(load):
            return AdmissionDecision(admitted=True, reason=ADMITTED_NOT_SATURATED)
        if self.in_flight(key) < self.fair_share(key):
            return AdmissionDecision(admitted=True, reason=ADMITTED_UNDER_SHARE)
        return AdmissionDecision(admitted=False, retry_after_s=self.retry_after_s(load), reason=REFUSED_OVER_SHARE)

    def retry_after_s(self, load: EngineLoad) -> float:
        """Rough seconds until the pool has room: one batch turnover per batch queued ahead, plus the running one."""
        queued_batches = max(0, load.waiting_requests) / max(1, load.running_requests)
        estimate = self.config.batch_turnover_s * (1 + queued_batches)
        return min(self.config.max_retry_after_s, max(1.0, estimate))

    def start(self, key: str, cost: int) -> None:
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        self._in_flight[key] = self._in_flight.get(key, 0) + cost
        self._total += cost

    def finish(self, key: str, cost: int) -> None:
        """Release ``cost`` of ``key``'s in-flight work. Releasing more than was started clamps at zero (a bug in
        the caller must not leave a key with negative cost, which would let it past every share)."""
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        held = self._in_flight.get(key, 0)
        released = min(held, cost)
        if held - released > 0:
            self._in_flight[key] = held - released
        else:
            self._in_flight.pop(key, None)
        self._total -= released
