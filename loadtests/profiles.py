"""The named load profiles: a traffic shape, a prompt workload and a think time, scaled by users and run time.

``--users`` is the most users a profile ever runs and ``--run-time`` its whole length; each profile decides how
it moves within those bounds, so every profile is bounded by the same two numbers the operator gave.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from loadtests import prompts
from loadtests.shapes import PoissonSessions, Shape, Spike, Steady, Step

ShapeBuilder = Callable[[int, float, float, int], Shape]
"""``(max_users, duration_s, spawn_rate, seed) -> Shape``."""


def _steady(users: int, duration_s: float, spawn_rate: float, seed: int) -> Shape:
    return Steady(users=users, duration_s=duration_s, spawn_rate=spawn_rate)


def _step(users: int, duration_s: float, spawn_rate: float, seed: int) -> Shape:
    """Four equal steps up to ``users``: a quarter of them, then another quarter every quarter of the run."""
    quarter = max(1, users // 4)
    return Step(
        start_users=quarter,
        step_users=quarter,
        step_s=duration_s / 4,
        max_users=users,
        duration_s=duration_s,
        spawn_rate=spawn_rate,
    )


def _spike(users: int, duration_s: float, spawn_rate: float, seed: int) -> Shape:
    """A quarter of the users, all of them for the middle fifth of the run, then a quarter again (recovery)."""
    return Spike(
        base_users=max(1, users // 4),
        peak_users=users,
        spike_at_s=duration_s * 0.4,
        spike_s=duration_s * 0.2,
        duration_s=duration_s,
        spawn_rate=spawn_rate,
    )


def _poisson(users: int, duration_s: float, spawn_rate: float, seed: int) -> Shape:
    """Sessions arrive so that on average half of ``users`` are active; the cap absorbs the bursts."""
    mean_session_s = max(1.0, min(30.0, duration_s / 4))
    return PoissonSessions(
        rate_per_s=users / 2 / mean_session_s,
        mean_session_s=mean_session_s,
        max_users=users,
        duration_s=duration_s,
        seed=seed,
    )


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    build_shape: ShapeBuilder
    workload: Literal["chat", "shared-prefix"] = "chat"
    think: Literal["constant", "exponential"] = "constant"
    think_time_s: float = 0.5
    """Pause between a user's requests: constant, or the mean of an exponential (Poisson-like requests)."""

    def shape(self, *, users: int, duration_s: float, spawn_rate: float, seed: int = 0) -> Shape:
        return self.build_shape(users, duration_s, spawn_rate, seed)

    def prompt(self, seed: int, index: int) -> prompts.Prompt:
        if self.workload == "shared-prefix":
            return prompts.make_shared_prefix_prompt(seed, index)
        return prompts.make_prompt(seed, index)

    def think_time(self, rng: random.Random) -> float:
        return rng.expovariate(1 / self.think_time_s) if self.think == "exponential" else self.think_time_s


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("steady", "constant users, general chat prompts", _steady),
        Profile("step", "users rise in four steps to the maximum", _step),
        Profile("spike", "a quarter of the users, all of them in the middle fifth, then back", _spike),
        Profile(
            "poisson",
            "seeded Poisson session arrivals; each user's requests are exponentially spaced",
            _poisson,
            think="exponential",
            think_time_s=2.0,
        ),
        Profile(
            "shared-prefix",
            "constant users, every prompt starts with the same long system prompt (prefix caching)",
            _steady,
            workload="shared-prefix",
        ),
    )
}


class UnknownProfile(LookupError):
    pass


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
