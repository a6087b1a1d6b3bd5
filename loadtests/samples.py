"""Turn request records into the sample sets and summary numbers that the gate and the report share. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loadtests.records import RequestRecord


@dataclass(frozen=True, slots=True)
class Samples:
    """The latency samples of one run (or one variant of a run) and its request and token counts."""

    ttft_s: tuple[float, ...]
    itl_s: tuple[float, ...]
    e2e_s: tuple[float, ...]
    requests: int
    errors: int
    output_tokens: int
    duration_s: float
    """From the first request sent to the last one finished; the denominator of throughput."""
    served_by: tuple[str, ...] = ()
    """The distinct variants that served the successful requests (from the response header)."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0


def samples_from_records(records: Iterable[RequestRecord]) -> Samples:
    """Latencies come from successful requests only; every request counts towards the error rate."""
    rows = list(records)
    good = [r for r in rows if r.ok]
    starts = [r.start_time for r in rows]
    ends = [r.end_time for r in rows if r.end_time is not None]
    duration = max(ends) - min(starts) if ends and starts else 0.0
    return Samples(
        ttft_s=tuple(r.ttft_s for r in good if r.ttft_s is not None),
        itl_s=tuple(r.itl_s for r in good if r.itl_s is not None),
        e2e_s=tuple(r.e2e_s for r in good if r.e2e_s is not None),
        requests=len(rows),
        errors=len(rows) - len(good),
        output_tokens=sum(r.output_tokens or 0 for r in good),
        duration_s=max(0.0, duration),
        served_by=tuple(sorted({r.variant for r in good})),
    )


def by_variant(records: Iterable[RequestRecord]) -> dict[str, list[RequestRecord]]:
    """Records grouped by the variant that served them; failures without a variant header go under the pinned
    variant if there was one, else ``"unknown"``."""
    groups: dict[str, list[RequestRecord]] = {}
    for record in records:
        key = record.variant or record.requested_variant or "unknown"
        groups.setdefault(key, []).append(record)
    return dict(sorted(groups.items()))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation, as numpy's default; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    errors: int
    error_rate: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    output_tokens: int
    output_tokens_per_s: float


def summarize(samples: Samples) -> Summary:
    return Summary(
        requests=samples.requests,
        errors=samples.errors,
        error_rate=samples.error_rate,
        ttft_p50_s=percentile(samples.ttft_s, 50),
        ttft_p95_s=percentile(samples.ttft_s, 95),
        ttft_p99_s=percentile(samples.ttft_s, 99),
        itl_p50_s=percentile(samples.itl_s, 50),
        itl_p95_s=percentile(samples.itl_s, 95),
        e2e_p50_s=percentile(samples.e2e_s, 50),
        e2e_p95_s=percentile(samples.e2e_s, 95),
        output_tokens=samples.output_tokens,
        output_tokens_per_s=samples.output_tokens_per_s,
    )


def throughput_series(records: Iterable[RequestRecord], bin_s: float) -> tuple[list[float], list[float]]:
    """Output tokens per second in bins of ``bin_s`` from the first request: ``(bin_starts, tokens_per_s)``.

    Each successful request's tokens are spread evenly over its decode window (first token to end), so a long
    answer counts in every bin it was streaming in instead of all at once when it finished.
    """
    rows = [r for r in records if r.ok and r.output_tokens and r.end_time is not None]
    if not rows or bin_s <= 0:
        return [], []
    origin = min(r.start_time for r in rows)
    horizon = max(r.end_time or origin for r in rows) - origin
    bins = [0.0] * max(1, math.ceil(horizon / bin_s))
    for r in rows:
        begin = (r.first_token_time or r.start_time) - origin
        end = (r.end_time or r.start_time) - origin
        tokens = float(r.output_tokens or 0)
        if end <= begin:
            bins[min(len(bins) - 1, int(begin // bin_s))] += tokens
            continue
        rate = tokens / (end - begin)
        for i in range(int(begin // bin_s), min(len(bins), math.ceil(end / bin_s))):
            overlap = min(end, (i + 1) * bin_s) - max(begin, i * bin_s)
            if overlap > 0:
                bins[i] += rate * overlap
    return [i * bin_s for i in range(len(bins))], [b / bin_s for b in bins]
