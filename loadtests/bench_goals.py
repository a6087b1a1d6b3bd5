"""The project's speed goals, checked against one benchmark run: pure, so the verdicts are unit-tested.

Goals (issue 3): this stack at least 0.9x vLLM's own server in output tokens/s at 32 and 64 streams, at least
2x ``ray.serve.llm`` there, and no more than 20 ms added to p50 time to first token at one stream. A goal
whose servers did not both run at that level is reported as not measured, never as met. A run of several rounds
is judged on the median of the per-round figures, each round's servers compared with each other only.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

Metric = Literal["throughput_ratio", "ttft_added_ms"]


class LevelNumbers(Protocol):
    target: str
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None
    round: int


@dataclass(frozen=True)
class Goal:
    target: str
    baseline: str
    concurrency: int
    metric: Metric
    bound: float  # a minimum for ratios, a maximum for added milliseconds

    def describe(self) -> str:
        if self.metric == "throughput_ratio":
            return f"{self.target} >= {self.bound:g}x {self.baseline} output tok/s at {self.concurrency} streams"
        return f"{self.target} adds <= {self.bound:g} ms to {self.baseline}'s p50 TTFT at {self.concurrency} stream"


@dataclass(frozen=True)
class GoalVerdict:
    goal: Goal
    measured: float | None
    met: bool | None  # None: not measured

    def describe(self) -> str:
        goal = self.goal
        if self.measured is None:
            return f"{goal.describe()}: not measured"
        if goal.metric == "throughput_ratio":
            detail = f"measured {self.measured:.2f}x"
            miss = f", missed by {goal.bound - self.measured:.2f}x" if not self.met else ""
        else:
            detail = f"measured {self.measured:+.1f} ms"
            miss = f", missed by {self.measured - goal.bound:.1f} ms" if not self.met else ""
        return f"{goal.describe()}: {'met' if self.met else 'MISSED'} ({detail}{miss})"


DEFAULT_GOALS: tuple[Goal, ...] = (
    Goal("servefleet", "vllm", 32, "throughput_ratio", 0.9),
    Goal("servefleet", "vllm", 64, "throughput_ratio", 0.9),
    Goal("servefleet", "ray-serve-llm", 32, "throughput_ratio", 2.0),
    Goal("servefleet", "ray-serve-llm", 64, "throughput_ratio", 2.0),
    Goal("servefleet", "vllm", 1, "ttft_added_ms", 20.0),
)


def judge(results: Iterable[LevelNumbers], goals: Iterable[Goal] = DEFAULT_GOALS) -> list[GoalVerdict]:
    by_round: dict[int, dict[tuple[str, int], LevelNumbers]] = defaultdict(dict)
    for r in results:
        by_round[r.round][(r.target, r.concurrency)] = r
    verdicts = []
    for goal in goals:
        per_round = [m for by_key in by_round.values() if (m := _measure(goal, by_key)) is not None]
        if not per_round:
            verdicts.append(GoalVerdict(goal, None, None))
            continue
        measured = statistics.median(per_round)
        met = measured >= goal.bound if goal.metric == "throughput_ratio" else measured <= goal.bound
        verdicts.append(GoalVerdict(goal, round(measured, 3), met))
    return verdicts


def _measure(goal: Goal, by_key: dict[tuple[str, int], LevelNumbers]) -> float | None:
    """The goal's figure within one round, or None where one of its servers did not run at that level."""
    mine = by_key.get((goal.target, goal.concurrency))
    base = by_key.get((goal.baseline, goal.concurrency))
    if mine is None or base is None:
        return None
    if goal.metric == "throughput_ratio":
        return mine.output_tokens_per_s / base.output_tokens_per_s if base.output_tokens_per_s > 0 else None
    if mine.ttft_p50_ms is None or base.ttft_p50_ms is None:
        return None
    return mine.ttft_p50_ms - base.ttft_p50_ms
