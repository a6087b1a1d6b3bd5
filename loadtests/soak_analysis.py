"""Is memory flat? The soak run's judgement of its own samples, and its Markdown summary. Pure: no Ray, no I/O.

Each process is one series, keyed by pid and label (a pooled Ray worker that becomes a replica changes its title,
and a restarted replica gets a new pid: both start a new series rather than bend an old one). The first
``warmup_s`` seconds are left out, because a fresh cluster's memory rises while caches, allocator arenas and
lazily imported modules fill in; what matters is what happens after that.

A process is **growing** only when both its least-squares slope and its net growth (mean of the last few samples
minus mean of the first few after the warm-up) exceed their limits: a single step (a cache filling once) has
growth but, spread over the run, little slope, and sampling noise has slope but no net growth.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

MIB = 1024 * 1024
TEN_MINUTES_S = 600.0
METRICS = ("uss", "pss", "rss")
TOTAL_LABEL = "all sampled processes (sum)"


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One process at one sweep. Bytes; ``t_s`` counts from the start of the load."""

    t_s: float
    pid: int
    label: str
    rss: int
    uss: int
    pss: int

    def value(self, metric: str) -> int:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        return int(getattr(self, metric))


@dataclass(frozen=True, slots=True)
class Thresholds:
    warmup_s: float = 120.0
    max_slope_mib_per_10min: float = 5.0
    max_growth_mib: float = 5.0
    edge_points: int = 3
    """Samples averaged for the start and end values, so one noisy sample does not decide growth."""
    min_points: int = 5
    """Fewer samples than this after the warm-up: too short-lived to judge."""

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.max_slope_mib_per_10min < 0 or self.max_growth_mib < 0:
            raise ValueError(f"thresholds must not be negative: {self}")
        if self.edge_points < 1 or self.min_points < max(2, self.edge_points):
            raise ValueError(f"need edge_points >= 1 and min_points >= max(2, edge_points): {self}")


@dataclass(frozen=True, slots=True)
class ProcessTrend:
    label: str
    pid: int  # 0 for the sum over processes
    points: int  # samples after the warm-up
    first_s: float  # when the process was first and last seen (any sample, warm-up included)
    last_s: float
    start_mib: float | None  # baseline: mean of the first ``edge_points`` samples after the warm-up
    end_mib: float | None
    peak_mib: float  # over the whole run, warm-up included
    growth_mib: float | None
    growth_pct: float | None
    slope_mib_per_10min: float | None
    verdict: str  # "flat", "growing" or "short-lived"
    tail_slope_mib_per_10min: float | None = None
    """Slope over the last third of the judged samples: a cache filling up slows down, a leak does not."""


def least_squares_slope(ts: Sequence[float], values: Sequence[float]) -> float | None:
    """Slope of the least-squares line through ``(ts, values)``; None with fewer than two distinct times."""
    n = len(ts)
    if n != len(values):
        raise ValueError("ts and values differ in length")
    if n < 2:
        return None
    mean_t, mean_v = sum(ts) / n, sum(values) / n
    var_t = sum((t - mean_t) ** 2 for t in ts)
    if var_t == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(ts, values, strict=True)) / var_t


def trend(
    label: str,
    pid: int,
    points: Sequence[tuple[float, float]],
    thresholds: Thresholds,
    *,
    window: tuple[float, float],
) -> ProcessTrend:
    """Judge one series of ``(t_s, MiB)`` points (any order) over ``window``: the first sweep after the warm-up
    and the last sweep of the run. A process that was not there for all of it is reported, not judged."""
    if not points:
        raise ValueError(f"no samples for {label} (pid {pid})")
    ordered = sorted(points)
    after = [(t, v) for t, v in ordered if t >= thresholds.warmup_s]
    peak = max(v for _, v in ordered)
    first_s, last_s = ordered[0][0], ordered[-1][0]
    spans = first_s <= window[0] and last_s >= window[1]
    if len(after) < thresholds.min_points or not spans:
        return ProcessTrend(label, pid, len(after), first_s, last_s, None, None, peak, None, None, None, "short-lived")
    k = thresholds.edge_points
    start = sum(v for _, v in after[:k]) / k
    end = sum(v for _, v in after[-k:]) / k
    growth = end - start
    slope = least_squares_slope([t for t, _ in after], [v for _, v in after])
    slope_10 = None if slope is None else slope * TEN_MINUTES_S
    tail = after[-max(3, len(after) // 3) :]
    tail_slope = least_squares_slope([t for t, _ in tail], [v for _, v in tail])
    growing = (
        slope_10 is not None and slope_10 > thresholds.max_slope_mib_per_10min and growth > thresholds.max_growth_mib
    )
    return ProcessTrend(
        label=label,
        pid=pid,
        points=len(after),
        first_s=first_s,
        last_s=last_s,
        start_mib=start,
        end_mib=end,
        peak_mib=peak,
        growth_mib=growth,
        growth_pct=100 * growth / start if start > 0 else None,
        slope_mib_per_10min=slope_10,
        verdict="growing" if growing else "flat",
        tail_slope_mib_per_10min=None if tail_slope is None else tail_slope * TEN_MINUTES_S,
    )


def analyse(samples: Iterable[MemorySample], metric: str, thresholds: Thresholds) -> list[ProcessTrend]:
    """One trend per process, heaviest first, then the sum over all sampled processes per sweep."""
    series: dict[tuple[int, str], list[tuple[float, float]]] = {}
    totals: dict[float, float] = {}
    for sample in samples:
        mib = sample.value(metric) / MIB
        series.setdefault((sample.pid, sample.label), []).append((sample.t_s, mib))
        totals[sample.t_s] = totals.get(sample.t_s, 0.0) + mib
    if not series:
        return []
    judged = [t for t in sorted(totals) if t >= thresholds.warmup_s]
    window = (judged[0], judged[-1]) if judged else (math.inf, math.inf)
    trends = [trend(label, pid, points, thresholds, window=window) for (pid, label), points in series.items()]
    trends.sort(key=lambda t: (t.verdict == "short-lived", -t.peak_mib, t.label, t.pid))
    trends.append(trend(TOTAL_LABEL, 0, list(totals.items()), thresholds, window=window))
    return trends


def growing(trends: Iterable[ProcessTrend]) -> list[ProcessTrend]:
    """The processes judged growing (the sum is not one: a process starting late raises it without a leak)."""
    return [t for t in trends if t.verdict == "growing" and t.pid != 0]


# ---------------------------------------------------------------------------------------------- requests


class RequestLike(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> int | None: ...
    @property
    def ok(self) -> bool: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True)
class RequestTally:
    total: int
    ok: int
    by_kind_status: dict[str, int] = field(default_factory=dict)  # "stream 200" -> count
    errors: dict[str, int] = field(default_factory=dict)  # first 120 characters of each error -> count

    @property
    def failed(self) -> int:
        return self.total - self.ok


def tally(requests: Iterable[RequestLike]) -> RequestTally:
    by: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    total = ok = 0
    for request in requests:
        total += 1
        ok += request.ok
        status = "no response" if request.status is None else str(request.status)
        by[f"{request.kind} {status}{'' if request.ok else ' failed'}"] += 1
        if not request.ok:
            errors[(request.error or "?")[:120]] += 1
    return RequestTally(total, ok, dict(sorted(by.items())), dict(errors.most_common()))


# ---------------------------------------------------------------------------------------------- report


def _num(value: float | None, digits: int = 1, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(
    trends: Sequence[ProcessTrend],
    requests: RequestTally,
    *,
    metric: str,
    thresholds: Thresholds,
    context: Mapping[str, str],
) -> str:
    """The summary: the run, the verdict, a row per process, the requests."""
    bad = growing(trends)
    memory_ok = not bad
    verdict = "FLAT" if memory_ok else f"GROWING ({', '.join(f'{t.label} [{t.pid}]' for t in bad)})"
    lines = ["# Soak run", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        f"- memory metric: {metric.upper()} (MiB); warm-up left out: first {thresholds.warmup_s:g} s; a process is "
        f"growing when its slope exceeds {thresholds.max_slope_mib_per_10min:g} MiB/10 min and its growth "
        f"{thresholds.max_growth_mib:g} MiB",
        f"- **memory: {verdict}**",
        f"- **requests: {requests.total}, ok {requests.ok}, failed {requests.failed}**",
        "",
        "| process | pid | seen (s) | start | end | peak | growth MiB | growth % | slope MiB/10 min "
        "| last-third slope | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trends:
        name = f"**{t.label}**" if t.pid == 0 else t.label
        lines.append(
            f"| {name} | {t.pid or ''} | {t.first_s:.0f}-{t.last_s:.0f} | {_num(t.start_mib)} | {_num(t.end_mib)} | "
            f"{_num(t.peak_mib)} | {_num(t.growth_mib, signed=True)} | {_num(t.growth_pct, 2, signed=True)} | "
            f"{_num(t.slope_mib_per_10min, 2, signed=True)} | {_num(t.tail_slope_mib_per_10min, 2, signed=True)} | "
            f"{t.verdict} |"
        )
    if any(t.verdict == "short-lived" for t in trends):
        lines += [
            "",
            "short-lived: not there for the whole judged window (pooled Ray workers come and go, a restarted replica "
            "has a new pid); listed, not judged.",
        ]
    lines += ["", "| requests | count |", "|---|---|", *(f"| {k} | {n} |" for k, n in requests.by_kind_status.items())]
    if requests.errors:
        lines += ["", "Errors:", *(f"- {n} x `{e}`" for e, n in requests.errors.items())]
    return "\n".join(lines) + "\n"
