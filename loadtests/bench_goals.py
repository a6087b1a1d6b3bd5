"""The project's speed goals, checked against one benchmark run: pure, so the verdicts are unit-tested.

Goals (issue 3): this stack at least 0.9x vLLM's own server in output tokens/s at 32 and 64 streams, at least
2x ``ray.serve.llm`` there, and no more than 20 ms added to p50 time to first token at one stream. A goal
whose servers did not both run at that level is reported as not measured, never as met.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

Metric = Literal["throughput_ratio", "ttft_added_ms"]


class LevelNumbers(Protocol):
    target: str
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None


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
    by_key = {(r.target, r.concurrency): r for r in results}
    verdicts = []
    for goal in goals:
        mine = by_key.get((goal.target, goal.concurrency))
        base = by_key.get((goal.baseline, goal.concurrency))
        measured: float | None = None
        if mine is not None and base is not None:
            if goal.metric == "throughput_ratio" and base.output_tokens_per_s > 0:
                measured = mine.output_tokens_per_s / base.output_tokens_per_s
            elif goal.metric == "ttft_added_ms" and mine.ttft_p50_ms is not None and base.ttft_p50_ms is not None:
                measured = mine.ttft_p50_ms - base.ttft_p50_ms
        if measured is None:
            verdicts.append(GoalVerdict(goal, None, None))
            continue
        met = measured >= goal.bound if goal.metric == "throughput_ratio" else measured <= goal.bound
        verdicts.append(GoalVerdict(goal, round(measured, 3), met))
    return verdicts
