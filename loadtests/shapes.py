"""Traffic shapes as pure functions of elapsed time: ``shape.at(t)`` -> ``Tick(users, spawn_rate)`` or ``None``.

This is Locust's ``LoadTestShape.tick()`` contract without Locust: ``None`` means "the run is over". Every shape
is bounded: it never asks for more than ``max_users`` users and returns ``None`` from ``duration_s`` on, so a
shape alone ends a run. The Locust adapters live in ``locust_shapes.py``, because importing Locust
monkey-patches the standard library with gevent, which pure code and its tests must not suffer.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from loadtests.guards import check_run_time, check_users


@dataclass(frozen=True, slots=True)
class Tick:
    users: int
    spawn_rate: float
    """Users started (or stopped) per second while moving to ``users``."""

    def as_locust(self) -> tuple[int, float]:
        return (self.users, self.spawn_rate)


class Shape(Protocol):
    @property
    def max_users(self) -> int: ...

    @property
    def duration_s(self) -> float: ...

    def at(self, t: float) -> Tick | None: ...


def _check(users: int, duration_s: float, spawn_rate: float) -> None:
    check_users(users)
    check_run_time(duration_s)
    if spawn_rate <= 0:
        raise ValueError(f"spawn_rate must be positive, got {spawn_rate}")


def _running(t: float, duration_s: float) -> bool:
    return 0 <= t < duration_s


@dataclass(frozen=True, slots=True)
class Steady:
    """``users`` users from the start to the end."""

    users: int
    duration_s: float
    spawn_rate: float = 10.0

    def __post_init__(self) -> None:
        _check(self.users, self.duration_s, self.spawn_rate)

    @property
    def max_users(self) -> int:
        return self.users

    def at(self, t: float) -> Tick | None:
        return Tick(self.users, self.spawn_rate) if _running(t, self.duration_s) else None


@dataclass(frozen=True, slots=True)
class Step:
    """``start_users``, then ``step_users`` more every ``step_s`` seconds, holding at ``max_users``."""

    start_users: int
    step_users: int
    step_s: float
    max_users: int
    duration_s: float
    spawn_rate: float = 10.0

    def __post_init__(self) -> None:
        _check(self.max_users, self.duration_s, self.spawn_rate)
        if not (1 <= self.start_users <= self.max_users and self.step_users >= 0 and self.step_s > 0):
            raise ValueError(f"need 1 <= start_users <= max_users, step_users >= 0, step_s > 0; got {self}")

    def at(self, t: float) -> Tick | None:
        if not _running(t, self.duration_s):
            return None
        users = self.start_users + self.step_users * int(t // self.step_s)
        return Tick(min(users, self.max_users), self.spawn_rate)


@dataclass(frozen=True, slots=True)
class Spike:
    """``base_users``, jumping to ``peak_users`` for ``spike_s`` seconds from ``spike_at_s``, then back."""

    base_users: int
    peak_users: int
    spike_at_s: float
    spike_s: float
    duration_s: float
    spawn_rate: float = 10.0
    spike_spawn_rate: float = 100.0
    """A spike arrives at once, so its users start far faster than the base ramp."""

    def __post_init__(self) -> None:
        _check(self.peak_users, self.duration_s, self.spawn_rate)
        if not (1 <= self.base_users <= self.peak_users and self.spike_at_s >= 0 and self.spike_s > 0):
            raise ValueError(f"need 1 <= base_users <= peak_users, spike_at_s >= 0, spike_s > 0; got {self}")

    @property
    def max_users(self) -> int:
        return self.peak_users

    def at(self, t: float) -> Tick | None:
        if not _running(t, self.duration_s):
            return None
        if self.spike_at_s <= t < self.spike_at_s + self.spike_s:
            return Tick(self.peak_users, self.spike_spawn_rate)
        return Tick(self.base_users, self.spike_spawn_rate if t >= self.spike_at_s else self.spawn_rate)


def poisson_arrivals(rate_per_s: float, duration_s: float, seed: int) -> tuple[float, ...]:
    """Arrival times of a Poisson process with ``rate_per_s`` on ``[0, duration_s)``: exponential gaps."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
    rng = random.Random(f"arrivals:{seed}")
    times: list[float] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_per_s)
    return tuple(times)


@dataclass(frozen=True, slots=True)
class PoissonSessions:
    """Users arrive as a seeded Poisson process and each stays an exponential time (mean ``mean_session_s``).

    Locust is a closed-loop tool (a user waits for its answer before sending again), so open-loop Poisson
    traffic is approximated the usual way: the *user count* follows the arrivals and departures of sessions
    (an M/M/inf queue, mean ``rate_per_s * mean_session_s`` users), capped at ``max_users``.
    """

    rate_per_s: float
    mean_session_s: float
    max_users: int
    duration_s: float
    seed: int = 0
    spawn_rate: float = 100.0
    """High, so that the user count follows the arrivals within Locust's one-second tick."""
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check(self.max_users, self.duration_s, self.spawn_rate)
        if self.mean_session_s <= 0:
            raise ValueError(f"mean_session_s must be positive, got {self.mean_session_s}")
        starts = poisson_arrivals(self.rate_per_s, self.duration_s, self.seed)
        rng = random.Random(f"sessions:{self.seed}")
        ends = sorted(start + rng.expovariate(1 / self.mean_session_s) for start in starts)
        # Frozen dataclass: the schedule is computed once here and then only read.
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(self, "_ends", tuple(ends))

    def active_sessions(self, t: float) -> int:
        return bisect.bisect_right(self._starts, t) - bisect.bisect_right(self._ends, t)

    def at(self, t: float) -> Tick | None:
        if not _running(t, self.duration_s):
            return None
        # At least one user, so a quiet moment does not look like the end of the test to Locust.
        return Tick(max(1, min(self.max_users, self.active_sessions(t))), self.spawn_rate)


def users_over_time(shape: Shape, step_s: float = 1.0) -> list[tuple[float, int]]:
    """``(t, users)`` sampled every ``step_s`` until the shape ends: for plots, reports and tests."""
    out: list[tuple[float, int]] = []
    for i in range(math.ceil(shape.duration_s / step_s) + 1):
        tick = shape.at(i * step_s)
        if tick is None:
            break
        out.append((i * step_s, tick.users))
    return out
