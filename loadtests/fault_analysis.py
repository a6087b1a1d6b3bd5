"""What clients saw when a part of the stack was killed under Locust load: the counts and the verdict. Pure.

Input: Locust's per-request records (``loadtests.records``; Unix start time, end-to-end latency, status, error
type, Retry-After, streaming or not) and the fault's times on the same clock. A fault does not act in an
instant: the part is killed at ``at`` and is gone at ``gone_at`` (the process reaped, the node's replicas
exited). Each request falls in exactly one phase:

- **before**: ended at or before ``at``;
- **in flight**: started at or before ``gone_at`` and ended after ``at``: it may have been on the failed part;
- **after**: started after ``gone_at``: it was never on the failed part, so it must not fail.

The guarantees checked: no failure before or after the fault (only requests in flight on the failed part may
fail); every failure retryable (``is_retryable``); nothing hung (every request ended within ``hang_s``);
capacity came back (``back_at`` known).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loadtests.records import RequestRecord

Phase = Literal["before", "in_flight", "after"]
RETRYABLE_STREAM_ERROR = "service_unavailable"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault on the records' clock (Unix seconds). ``gone_at``/``back_at`` None: not seen in time."""

    scenario: str
    target: str  # what was killed, in words
    at: float
    gone_at: float | None = None
    back_at: float | None = None  # capacity back: the pool at full count again (and a probe answered)


def is_retryable(record: RequestRecord) -> bool:
    """A failure the client may retry: a 503 with a Retry-After header, or a stream that began (200) and then
    ended with a ``service_unavailable`` error event."""
    if record.status == 503:
        return bool(record.retry_after)
    return record.status == 200 and record.error_type == RETRYABLE_STREAM_ERROR


def phase(record: RequestRecord, at: float, gone_at: float) -> Phase:
    end = record.end_time
    if end is not None and end <= at:
        return "before"
    return "in_flight" if record.start_time <= gone_at else "after"


def is_hung(record: RequestRecord, hang_s: float) -> bool:
    """No end recorded, or it took ``hang_s`` or longer (the client's own timeout cuts it there)."""
    return record.e2e_s is None or record.e2e_s >= hang_s


@dataclass(frozen=True)
class PhaseCounts:
    requests: int = 0
    failed: int = 0
    streaming: int = 0
    failed_streaming: int = 0
    non_streaming: int = 0
    failed_non_streaming: int = 0


def _count(records: Iterable[RequestRecord]) -> PhaseCounts:
    rows = list(records)
    streams = [r for r in rows if r.stream]
    plain = [r for r in rows if not r.stream]
    return PhaseCounts(
        requests=len(rows),
        failed=sum(not r.ok for r in rows),
        streaming=len(streams),
        failed_streaming=sum(not r.ok for r in streams),
        non_streaming=len(plain),
        failed_non_streaming=sum(not r.ok for r in plain),
    )


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    target: str
    requests: int
    failed: int
    before: PhaseCounts
    in_flight: PhaseCounts
    after: PhaseCounts
    failed_not_retryable: int
    hung: int
    slowest_s: float | None
    gone_s: float | None  # kill -> the killed part gone
    capacity_back_s: float | None  # kill -> pool at full count and a probe answered
    first_ok_after_s: float | None  # kill -> first success among requests started after the part was gone
    hang_s: float
    errors: dict[str, int] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def held(self) -> bool:
        return not self.problems


def problems(
    *, requests: int, before: PhaseCounts, after: PhaseCounts, not_retryable: int, hung: int, back: float | None
) -> tuple[str, ...]:
    """Each guarantee that did not hold, in words; empty when all held."""
    found = []
    if requests == 0:
        found.append("no request was recorded")
    if before.failed:
        found.append(f"{before.failed} request(s) failed before the fault")
    if after.failed:
        found.append(f"{after.failed} request(s) started after the fault and failed")
    if not_retryable:
        found.append(f"{not_retryable} failure(s) not retryable (neither 503 + Retry-After nor service_unavailable)")
    if hung:
        found.append(f"{hung} request(s) hung")
    if back is None:
        found.append("capacity did not come back in time")
    return tuple(found)


def analyse(records: Sequence[RequestRecord], fault: Fault, *, hang_s: float) -> ScenarioResult:
    """Classify every request around ``fault`` and count what the guarantees are about."""
    gone_at = fault.at if fault.gone_at is None else max(fault.gone_at, fault.at)
    phases: dict[Phase, list[RequestRecord]] = {"before": [], "in_flight": [], "after": []}
    for record in records:
        phases[phase(record, fault.at, gone_at)].append(record)
    failed = [r for r in records if not r.ok]
    before, in_flight, after = (_count(phases[p]) for p in ("before", "in_flight", "after"))
    not_retryable = sum(not is_retryable(r) for r in failed)
    hung = sum(is_hung(r, hang_s) for r in records)
    ok_after = [end for r in phases["after"] if r.ok and (end := r.end_time) is not None]
    errors = Counter(f"{r.status} {r.error_type or '-'}: {r.error[:100]}" for r in failed)
    return ScenarioResult(
        scenario=fault.scenario,
        target=fault.target,
        requests=len(records),
        failed=len(failed),
        before=before,
        in_flight=in_flight,
        after=after,
        failed_not_retryable=not_retryable,
        hung=hung,
        slowest_s=max((r.e2e_s for r in records if r.e2e_s is not None), default=None),
        gone_s=None if fault.gone_at is None else gone_at - fault.at,
        capacity_back_s=None if fault.back_at is None else fault.back_at - fault.at,
        first_ok_after_s=min(ok_after) - fault.at if ok_after else None,
        hang_s=hang_s,
        errors=dict(errors.most_common()),
        problems=problems(
            requests=len(records),
            before=before,
            after=after,
            not_retryable=not_retryable,
            hung=hung,
            back=fault.back_at,
        ),
    )


def not_run(scenario: str, reason: str, *, hang_s: float) -> ScenarioResult:
    """A scenario that could not be run (its cluster did not come up, or did not recover from the last one)."""
    empty = PhaseCounts()
    return ScenarioResult(
        scenario=scenario,
        target="not run",
        requests=0,
        failed=0,
        before=empty,
        in_flight=empty,
        after=empty,
        failed_not_retryable=0,
        hung=0,
        slowest_s=None,
        gone_s=None,
        capacity_back_s=None,
        first_ok_after_s=None,
        hang_s=hang_s,
        problems=(f"not run: {reason}",),
    )


# ---------------------------------------------------------------------------------------------- report


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _split(counts: PhaseCounts) -> str:
    return (
        f"{counts.failed} of {counts.requests} "
        f"(stream {counts.failed_streaming}/{counts.streaming}, plain {counts.failed_non_streaming}/"
        f"{counts.non_streaming})"
    )


def table(results: Sequence[ScenarioResult]) -> str:
    """One column per scenario, one row per count (Markdown)."""
    rows: list[tuple[str, list[str]]] = [
        ("killed", [r.target for r in results]),
        ("requests (streaming / non-streaming)", [
            f"{r.requests} ({r.before.streaming + r.in_flight.streaming + r.after.streaming} / "
            f"{r.before.non_streaming + r.in_flight.non_streaming + r.after.non_streaming})"
            for r in results
        ]),
        ("failed", [str(r.failed) for r in results]),
        ("failed before the fault", [_split(r.before) for r in results]),
        ("failed among those in flight at the fault", [_split(r.in_flight) for r in results]),
        ("failed among those started after the fault", [_split(r.after) for r in results]),
        ("every failure retryable", [
            "yes" if not r.failed_not_retryable else f"NO ({r.failed_not_retryable} not)" for r in results
        ]),
        ("hung (no end, or >= the client timeout)", [f"{r.hung} (limit {r.hang_s:g} s)" for r in results]),
        ("slowest request (s)", [_s(r.slowest_s) for r in results]),
        ("killed part gone after (s)", [_s(r.gone_s) for r in results]),
        ("first new request OK after (s)", [_s(r.first_ok_after_s) for r in results]),
        ("capacity back after (s)", [_s(r.capacity_back_s) for r in results]),
        ("guarantees", ["held" if r.held else "NOT HELD" for r in results]),
    ]  # fmt: skip
    lines = [
        "| measure | " + " | ".join(r.scenario for r in results) + " |",
        "|---|" + "---|" * len(results),
        *(f"| {name} | " + " | ".join(values) + " |" for name, values in rows),
    ]
    return "\n".join(lines)


def markdown(results: Sequence[ScenarioResult], *, context: dict[str, str]) -> str:
    lines = ["# Fault drill", "", *(f"- {k}: {v}" for k, v in context.items()), "", table(results)]
    for r in results:
        if r.problems:
            lines += ["", f"**{r.scenario}: guarantees not held**", *(f"- {p}" for p in r.problems)]
        if r.errors:
            lines += ["", f"{r.scenario} failures:", *(f"- {n} x `{e}`" for e, n in r.errors.items())]
    return "\n".join(lines) + "\n"
