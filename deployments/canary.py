"""Canary rollout: a candidate variant takes a growing share of a baseline's traffic, step by step, and is rolled
back the moment it breaks a guard.

Pure: ``CanaryController`` takes the current state, the time and what was observed during the current step, and
returns the next state and the action to carry out (hold, set a weight, promote, roll back, with a reason).
Whoever runs it owns the clock, the stats and the weights, so its tests need neither Ray nor time to pass.

Per step, in order:

1. guards, as soon as the candidate has ``min_requests`` requests in the step (no need to wait out the step):
   its error rate above ``max_error_rate``, or its p95 TTFT above ``max_p95_ttft_ratio`` times the baseline's,
   rolls back. Errors are also judged earlier when they already settle it: more errors than
   ``max_error_rate * min_requests`` breach the guard whatever the next requests do;
2. the step lasts at least ``step_seconds`` and is judged on at least ``min_requests`` candidate requests;
   until both hold, hold;
3. a healthy step advances to the next weight, and after the last one promotes (the candidate takes all).

The baseline's p95 TTFT is remembered from the last step where it had ``min_requests`` requests, so that a
100 % step, where the baseline gets no traffic, is still compared with something.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_FROZEN = ConfigDict(extra="forbid", frozen=True)
_VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

Phase = Literal["ramping", "promoted", "rolled_back", "aborted"]
ActionKind = Literal["hold", "set_weight", "promote", "rollback"]


class RolloutGuards(BaseModel):
    model_config = _FROZEN

    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Highest share of the candidate's requests in a step that may fail."
    )
    max_p95_ttft_ratio: float = Field(
        default=1.5, gt=0, description="Highest candidate p95 TTFT, as a multiple of the baseline's p95 TTFT."
    )
    min_requests: int = Field(default=50, ge=1, description="Candidate requests a step needs before it is judged.")


class RolloutConfig(BaseModel):
    """A rollout of ``candidate`` over ``baseline``. ``steps`` are the candidate's percent of the pair's traffic."""

    model_config = _FROZEN

    baseline: str = Field(pattern=_VARIANT_NAME, description="The variant serving now.")
    candidate: str = Field(pattern=_VARIANT_NAME, description="The variant being rolled out.")
    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        min_length=1,
        description="Candidate weights in percent, strictly increasing, each in (0, 100].",
    )
    step_seconds: float = Field(default=300, gt=0, description="Shortest time each step runs before it is judged.")
    guards: RolloutGuards = Field(default_factory=RolloutGuards, description="When to roll back, when to judge.")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError(f"every step must be in (0, 100], got {steps}")
        if any(b <= a for a, b in pairwise(steps)):
            raise ValueError(f"steps must be strictly increasing, got {steps}")
        return steps

    @model_validator(mode="after")
    def _distinct(self) -> RolloutConfig:
        if self.baseline == self.candidate:
            raise ValueError("baseline and candidate must be different variants")
        return self

    def weights(self, current: Mapping[str, float], candidate_percent: float) -> dict[str, float]:
        """Router weights with the pair's combined share split ``100 - p : p``; other variants keep theirs."""
        missing = {self.baseline, self.candidate} - set(current)
        if missing:
            raise KeyError(f"weights lack rollout variants: {', '.join(sorted(missing))}")
        pair = current[self.baseline] + current[self.candidate]
        out = dict(current)
        out[self.candidate] = pair * candidate_percent / 100
        out[self.baseline] = pair - out[self.candidate]
        return out


@dataclass(frozen=True, slots=True)
class VariantStats:
    """One variant's requests in the current step. ``errors`` counts server faults (``counts_as_error``)."""

    requests: int
    errors: int = 0
    p95_ttft_s: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class StepStats:
    baseline: VariantStats
    candidate: VariantStats


@dataclass(frozen=True, slots=True)
class RolloutState:
    phase: Phase
    step: int
    step_started_at: float
    baseline_p95_ttft_s: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RolloutAction:
    """What to do now. ``candidate_weight`` is the candidate's percent after the action (0 after a rollback)."""

    kind: ActionKind
    candidate_weight: float
    reason: str


@dataclass(frozen=True, slots=True)
class Transition:
    state: RolloutState
    action: RolloutAction


class RolloutError(RuntimeError):
    """A manual transition that the rollout's phase does not allow (promoting a rolled-back rollout)."""


def counts_as_error(status: int) -> bool:
    """Server faults count against a candidate; a client's 4xx (bad input, unknown model) does not, nor does
    429, which says the pool is full rather than that the candidate is bad."""
    return status >= 500


class CanaryController:
    def __init__(self, config: RolloutConfig) -> None:
        self.config = config

    def candidate_weight(self, state: RolloutState) -> float:
        if state.phase == "promoted":
            return 100.0
        if state.phase in ("rolled_back", "aborted"):
            return 0.0
        return self.config.steps[state.step]

    def start(self, now: float) -> Transition:
        weight = self.config.steps[0]
        state = RolloutState(phase="ramping", step=0, step_started_at=now, reason="started")
        return Transition(state, RolloutAction("set_weight", weight, f"step 1/{len(self.config.steps)}: {weight:g}%"))

    def evaluate(self, state: RolloutState, now: float, stats: StepStats) -> Transition:
        """The next move, given what was observed since ``state.step_started_at``."""
        if state.phase != "ramping":
            return self._hold(state, f"rollout is {state.phase.replace('_', ' ')}")
        guards, steps = self.config.guards, self.config.steps
        baseline, candidate = stats.baseline, stats.candidate
        if baseline.requests >= guards.min_requests and baseline.p95_ttft_s is not None:
            state = replace(state, baseline_p95_ttft_s=baseline.p95_ttft_s)
        reference = state.baseline_p95_ttft_s
        enough = candidate.requests >= guards.min_requests

        if enough and candidate.error_rate > guards.max_error_rate:
            return self._rollback(
                state,
                f"error rate {candidate.error_rate:.2%} > {guards.max_error_rate:.2%} "
                f"over {candidate.requests} requests at {steps[state.step]:g}%",
            )
        if not enough and candidate.errors > guards.max_error_rate * guards.min_requests:
            return self._rollback(
                state,
                f"{candidate.errors} errors in the first {candidate.requests} requests already exceed "
                f"{guards.max_error_rate:.2%} of {guards.min_requests}",
            )
        if enough and candidate.p95_ttft_s is not None and reference is not None:
            ratio = _ratio(candidate.p95_ttft_s, reference)
            if ratio > guards.max_p95_ttft_ratio:
                return self._rollback(
                    state,
                    f"p95 TTFT {candidate.p95_ttft_s * 1000:.0f} ms is {ratio:.2f}x the baseline's "
                    f"{reference * 1000:.0f} ms (limit {guards.max_p95_ttft_ratio:g}x)",
                )

        elapsed = now - state.step_started_at
        if elapsed < self.config.step_seconds:
            where = f"step {state.step + 1}/{len(steps)} at {steps[state.step]:g}%"
            return self._hold(state, f"{where}: {elapsed:.0f}s of {self.config.step_seconds:g}s")
        if not enough:
            needed = f"{candidate.requests} < {guards.min_requests}"
            return self._hold(state, f"too few candidate requests to judge: {needed}")
        if reference is None:
            return self._hold(state, "no baseline p95 TTFT to compare with yet")
        if candidate.p95_ttft_s is None:
            return self._hold(state, "no candidate TTFT observed yet")

        if state.step + 1 < len(steps):
            nxt = state.step + 1
            advanced = RolloutState("ramping", nxt, now, reference, f"step {nxt} healthy")
            reason = f"step {nxt + 1}/{len(steps)}: {steps[nxt]:g}%"
            return Transition(advanced, RolloutAction("set_weight", steps[nxt], reason))
        return self._promote(state, now, f"all {len(steps)} steps healthy")

    def promote(self, state: RolloutState, now: float, reason: str = "promoted by operator") -> Transition:
        if state.phase != "ramping":
            raise RolloutError(f"cannot promote: the rollout is {state.phase.replace('_', ' ')}")
        return self._promote(state, now, reason)

    def abort(self, state: RolloutState, now: float, reason: str = "aborted by operator") -> Transition:
        if state.phase != "ramping":
            raise RolloutError(f"cannot abort: the rollout is {state.phase.replace('_', ' ')}")
        aborted = replace(state, phase="aborted", step_started_at=now, reason=reason)
        return Transition(aborted, RolloutAction("rollback", 0.0, reason))

    def _hold(self, state: RolloutState, reason: str) -> Transition:
        return Transition(state, RolloutAction("hold", self.candidate_weight(state), reason))

    def _rollback(self, state: RolloutState, reason: str) -> Transition:
        return Transition(replace(state, phase="rolled_back", reason=reason), RolloutAction("rollback", 0.0, reason))

    def _promote(self, state: RolloutState, now: float, reason: str) -> Transition:
        promoted = replace(state, phase="promoted", step_started_at=now, reason=reason)
        return Transition(promoted, RolloutAction("promote", 100.0, reason))


def _ratio(value: float, reference: float) -> float:
    if reference > 0:
        return value / reference
    return 1.0 if value <= 0 else math.inf


# ---- collecting a step's stats ----


def p95(values: Sequence[float]) -> float | None:
    """Nearest-rank 95th percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class VariantSample:
    """One replica's raw counts for one variant, mergeable with other replicas' before percentiles are taken."""

    requests: int
    errors: int
    ttft_s: tuple[float, ...] = ()


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    errors: int = 0
    ttft_s: deque[float] = field(default_factory=deque)


class StatsWindow:
    """Per-variant outcomes since the last ``reset`` (call it when a step starts), for one process.

    Keeps the most recent ``max_samples`` TTFTs per variant, which bounds memory on a long, busy step.
    """

    def __init__(self, max_samples: int = 10_000) -> None:
        self._max = max_samples
        self._tallies: dict[str, _Tally] = {}

    def record(self, variant: str, *, status: int, ttft_s: float | None = None) -> None:
        tally = self._tallies.get(variant)
        if tally is None:
            tally = self._tallies[variant] = _Tally(ttft_s=deque(maxlen=self._max))
        tally.requests += 1
        tally.errors += counts_as_error(status)
        if ttft_s is not None:
            tally.ttft_s.append(ttft_s)

    def snapshot(self) -> dict[str, VariantSample]:
        return {name: VariantSample(t.requests, t.errors, tuple(t.ttft_s)) for name, t in self._tallies.items()}

    def reset(self) -> None:
        self._tallies.clear()


def step_stats(snapshots: Iterable[Mapping[str, VariantSample]], *, baseline: str, candidate: str) -> StepStats:
    """Merge the snapshots of every replica that served the step into the controller's input."""

    every = list(snapshots)

    def merged(name: str) -> VariantStats:
        samples = [snapshot[name] for snapshot in every if name in snapshot]
        ttfts = [t for sample in samples for t in sample.ttft_s]
        return VariantStats(sum(s.requests for s in samples), sum(s.errors for s in samples), p95(ttfts))

    return StepStats(baseline=merged(baseline), candidate=merged(candidate))
