"""Per-key rate limits: token buckets for requests per second and tokens per minute.

Pure and deterministic: the caller passes ``now`` (a monotonic clock reading, in seconds) to every call, so tests
replay exact timelines. Not thread-safe, by design: the ingress runs on one asyncio loop.

Each limited key has up to two buckets. The request bucket holds ``max(1, requests_per_s)`` (one second's burst),
refilled at ``requests_per_s``; the token bucket holds ``tokens_per_minute`` (one minute's burst), refilled at
``tokens_per_minute / 60`` per second. A request needs one unit from the first and its token cost from the second,
and takes from neither unless both can pay: a refused request leaves no trace.

Memory stays bounded. A bucket that has refilled to capacity is indistinguishable from a new one, so keys idle that
long are dropped for free; past ``max_keys`` the least recently seen key is dropped too, which at worst hands that
key a full bucket early.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serve_app.auth import Principal
from serve_app.errors import InvalidRequest, Overloaded, ServeFleetError

__all__ = [
    "CostExceedsLimit",
    "RateDecision",
    "RateLimited",
    "RateLimiter",
    "RateLimits",
    "limits_by_key",
    "retry_after_header",
]

# Float refills (0.1 s x 10/s) land a hair below whole numbers; a shortfall this small is not a real one.
_EPSILON = 1e-9

REQUESTS = "requests_per_s"
TOKENS = "tokens_per_minute"
TOO_LARGE = "token_cost_exceeds_tokens_per_minute"


def retry_after_header(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds (the header has no fractions), rounded up, at least 1."""
    if not math.isfinite(seconds):
        raise ValueError(f"retry-after must be finite, got {seconds}")
    return str(max(1, math.ceil(seconds - _EPSILON)))


class RateLimited(Overloaded):
    """429 with the time after which the same request would be accepted."""

    default_code = "rate_limit_exceeded"

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, retry_after_s: float = 1.0
    ) -> None:
        super().__init__(message, param, code)
        # All state in args, so the error pickles across a Ray hop like the others in serve_app.errors.
        self.args = (message, param, code, retry_after_s)

    @property
    def retry_after_s(self) -> float:
        return float(self.args[3])

    def response_headers(self) -> dict[str, str]:
        return {"retry-after": retry_after_header(self.retry_after_s)}


class CostExceedsLimit(InvalidRequest):
    """One request costs more tokens than the key's whole per-minute budget: waiting would never help."""

    default_code = "request_too_large"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """One key's limits; None means that dimension is not limited."""

    requests_per_s: float | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in (REQUESTS, TOKENS):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number or None, got {value}")

    @property
    def unlimited(self) -> bool:
        return self.requests_per_s is None and self.tokens_per_minute is None


UNLIMITED = RateLimits()


def limits_by_key(principals: Iterable[Principal]) -> dict[str, RateLimits]:
    """The limits of every key that has any, keyed by the principal's name (the rate-limit key)."""
    out = {}
    for principal in principals:
        limits = RateLimits(principal.requests_per_s, principal.tokens_per_minute)
        if not limits.unlimited:
            out[principal.name] = limits
    return out


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    """When refused: seconds until the same request would be allowed (inf if it never would)."""
    reason: str = ""
    """Empty when allowed; else which limit refused: requests_per_s, tokens_per_minute, or
    token_cost_exceeds_tokens_per_minute."""
    token_cost: int = 0

    def error(self) -> ServeFleetError | None:
        """The exception the ingress raises for a refusal; None when allowed."""
        if self.allowed:
            return None
        if self.reason == TOO_LARGE:
            return CostExceedsLimit(
                f"this request may use {self.token_cost} tokens, more than this API key's tokens_per_minute "
                "limit; lower max_tokens or shorten the prompt",
                param="max_tokens",
            )
        return RateLimited(
            f"rate limit reached for this API key ({self.reason}); retry in {retry_after_header(self.retry_after_s)} s",
            retry_after_s=self.retry_after_s,
        )


ALLOWED = RateDecision(allowed=True)


@dataclass(slots=True)
class _Bucket:
    capacity: float
    rate: float
    """Units added per second."""
    level: float
    updated: float

    def refill(self, now: float) -> None:
        # A clock that steps back (it should not, being monotonic) adds nothing rather than draining.
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        shortfall = amount - self.level
        return 0.0 if shortfall <= _EPSILON else shortfall / self.rate

    def full_at(self, now: float) -> bool:
        return self.level + max(0.0, now - self.updated) * self.rate >= self.capacity - _EPSILON

    def take(self, amount: float) -> None:
        self.level = max(0.0, self.level - amount)


@dataclass(slots=True)
class _KeyState:
    requests: _Bucket | None
    tokens: _Bucket | None

    def buckets(self) -> list[_Bucket]:
        return [b for b in (self.requests, self.tokens) if b is not None]


class RateLimiter:
    """Per-key token buckets. ``limits`` maps a key to its limits; other keys get ``default`` (unlimited unless
    set, e.g. a per-client-address limit while auth is off)."""

    def __init__(
        self,
        limits: Mapping[str, RateLimits] | None = None,
        *,
        default: RateLimits = UNLIMITED,
        max_keys: int = 10_000,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._limits = dict(limits or {})
        self._default = default
        self._max_keys = max_keys
        self._states: OrderedDict[str, _KeyState] = OrderedDict()

    def __len__(self) -> int:
        """Keys holding bucket state now (bounded by ``max_keys``)."""
        return len(self._states)

    def limits_for(self, key: str) -> RateLimits:
        return self._limits.get(key, self._default)

    def check_and_consume(self, key: str, token_cost: int, now: float) -> RateDecision:
        """Take one request and ``token_cost`` tokens from ``key``'s budget, or refuse and take nothing."""
        if token_cost < 0:
            raise ValueError(f"token_cost must be >= 0, got {token_cost}")
        limits = self.limits_for(key)
        if limits.unlimited:
            return ALLOWED
        if limits.tokens_per_minute is not None and token_cost > limits.tokens_per_minute:
            return RateDecision(allowed=False, retry_after_s=math.inf, reason=TOO_LARGE, token_cost=token_cost)
        state = self._state(key, limits, now)
        waits: list[tuple[float, str]] = []
        if state.requests is not None:
            state.requests.refill(now)
            waits.append((state.requests.wait_for(1), REQUESTS))
        if state.tokens is not None:
            state.tokens.refill(now)
            waits.append((state.tokens.wait_for(token_cost), TOKENS))
        wait, reason = max(waits)
        if wait > 0:
            self._evict(now)
            return RateDecision(allowed=False, retry_after_s=wait, reason=reason, token_cost=token_cost)
        if state.requests is not None:
            state.requests.take(1)
        if state.tokens is not None:
            state.tokens.take(token_cost)
        self._evict(now)
        return RateDecision(allowed=True, token_cost=token_cost)

    def refund(self, key: str, tokens: int, now: float) -> None:
        """Give back tokens charged but not used (e.g. ``max_tokens`` reserved, fewer generated)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        state = self._states.get(key)
        if state is None or state.tokens is None:
            return  # an evicted key already has a full bucket
        state.tokens.refill(now)
        state.tokens.level = min(state.tokens.capacity, state.tokens.level + tokens)

    def _state(self, key: str, limits: RateLimits, now: float) -> _KeyState:
        state = self._states.get(key)
        if state is None:
            state = _KeyState(requests=None, tokens=None)
            if limits.requests_per_s is not None:
                capacity = max(1.0, limits.requests_per_s)
                state.requests = _Bucket(capacity, limits.requests_per_s, capacity, now)
            if limits.tokens_per_minute is not None:
                capacity = float(limits.tokens_per_minute)
                state.tokens = _Bucket(capacity, capacity / 60, capacity, now)
            self._states[key] = state
        self._states.move_to_end(key)
        return state

    def _evict(self, now: float) -> None:
        # Oldest first; stop at the first key that still carries information (amortized O(1) per call).
        while self._states:
            oldest = next(iter(self._states.values()))
            if not all(b.full_at(now) for b in oldest.buckets()):
                break
            self._states.popitem(last=False)
        while len(self._states) > self._max_keys:
            self._states.popitem(last=False)
