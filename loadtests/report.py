"""A human report of a load run or a gate: Markdown plus PNG plots (latency CDFs, throughput over time).

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, so no global figure state and no
display needed); matplotlib is imported inside the plotting functions so that importing this module is cheap.
The Markdown is built by pure functions from summaries and checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.gate import Verdict
from loadtests.records import RequestRecord
from loadtests.samples import Summary, by_variant, samples_from_records, summarize, throughput_series

TTFT_PNG = "ttft_cdf.png"
ITL_PNG = "itl_cdf.png"
THROUGHPUT_PNG = "throughput.png"
REPORT_MD = "report.md"


@dataclass(frozen=True, slots=True)
class ReportFiles:
    markdown: Path
    plots: tuple[Path, ...]


def cdf_plot(groups: Mapping[str, Sequence[float]], *, title: str, xlabel: str, path: Path) -> Path:
    """Empirical CDFs of ``groups`` (seconds, drawn in ms) on one axis, with the p50 and p95 marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, values in groups.items():
        if not values:
            continue
        ordered = sorted(v * 1000 for v in values)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, fractions, where="post", label=f"{name} (n={len(ordered)})")
    for level in (0.5, 0.95):
        axes.axhline(level, color="grey", linewidth=0.6, linestyle=":")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of requests")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    if any(groups.values()):
        axes.legend(loc="lower right")
    else:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def throughput_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, bin_s: float, path: Path) -> Path:
    """Output tokens/s over time since each group's first request, one stair per ``bin_s`` bin."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, (times, values) in series.items():
        if times:
            axes.stairs(values, [*times, times[-1] + bin_s], label=name)
    axes.set_title("Output-token throughput")
    axes.set_xlabel("seconds since the first request")
    axes.set_ylabel("output tokens / s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    if any(times for times, _ in series.values()):
        axes.legend(loc="upper right")
    else:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def bin_width(records: Sequence[RequestRecord], target_bins: int = 40) -> float:
    """About ``target_bins`` bins over the run, at least one second each."""
    ends = [r.end_time for r in records if r.end_time is not None]
    if not ends:
        return 1.0
    span = max(ends) - min(r.start_time for r in records)
    return max(1.0, math.ceil(span / target_bins))


def render_plots(groups: Mapping[str, Sequence[RequestRecord]], out_dir: Path) -> tuple[Path, ...]:
    """The three PNGs for ``groups`` (name -> records) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = {name: [r for r in rows if r.ok] for name, rows in groups.items()}
    width = max((bin_width(rows) for rows in groups.values() if rows), default=1.0)
    return (
        cdf_plot(
            {n: [r.ttft_s for r in rows if r.ttft_s is not None] for n, rows in ok.items()},
            title="Time to first token",
            xlabel="TTFT (ms)",
            path=out_dir / TTFT_PNG,
        ),
        cdf_plot(
            {n: [r.itl_s for r in rows if r.itl_s is not None] for n, rows in ok.items()},
            title="Inter-token latency (per request: decode time / (tokens - 1))",
            xlabel="ITL (ms)",
            path=out_dir / ITL_PNG,
        ),
        throughput_plot(
            {n: throughput_series(rows, width) for n, rows in groups.items()},
            bin_s=width,
            path=out_dir / THROUGHPUT_PNG,
        ),
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}"


def summary_table(summaries: Mapping[str, Summary]) -> str:
    """A Markdown table of the latency and throughput summary of each group."""
    lines = [
        "| variant | requests | errors | TTFT p50 / p95 / p99 (ms) | ITL p50 / p95 (ms) | E2E p50 / p95 (ms) "
        "| tokens/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in summaries.items():
        lines.append(
            f"| {name} | {s.requests} | {s.errors} ({s.error_rate:.1%}) "
            f"| {_ms(s.ttft_p50_s)} / {_ms(s.ttft_p95_s)} / {_ms(s.ttft_p99_s)} "
            f"| {_ms(s.itl_p50_s)} / {_ms(s.itl_p95_s)} | {_ms(s.e2e_p50_s)} / {_ms(s.e2e_p95_s)} "
            f"| {s.output_tokens_per_s:.1f} |"
        )
    return "\n".join(lines)


def _plots_section() -> str:
    return "\n".join(
        [
            "## Plots",
            "",
            f"![TTFT CDF]({TTFT_PNG})",
            "",
            f"![ITL CDF]({ITL_PNG})",
            "",
            f"![Throughput]({THROUGHPUT_PNG})",
            "",
        ]
    )


_DEFINITIONS = (
    "TTFT: request sent to first text chunk. ITL: per request, (last text chunk - first text chunk) / "
    "(output tokens - 1). Tokens/s: output tokens of successful requests over the run's wall time."
)


def run_markdown(title: str, summaries: Mapping[str, Summary], context: Mapping[str, str]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in context.items()]
    lines += ["", summary_table(summaries), "", _DEFINITIONS, "", _plots_section()]
    return "\n".join(lines)


def gate_markdown(verdict: Verdict, context: Mapping[str, str]) -> str:
    status = "PASS" if verdict.passed else "FAIL"
    lines = [f"# Release gate: {verdict.candidate} vs {verdict.baseline}: **{status}**", ""]
    lines += [f"- **{key}**: {value}" for key, value in context.items()]
    lines += ["", "## Checks", "", "| check | kind | result | details |", "| --- | --- | --- | --- |"]
    for check in verdict.checks:
        lines.append(f"| {check.name} | {check.kind} | {'pass' if check.passed else '**FAIL**'} | {check.message} |")
    lines += ["", "## Runs", ""]
    lines.append(summary_table(_summaries_from(verdict)))
    slo = verdict.slo
    lines += [
        "",
        f"SLOs: TTFT p95 <= {slo.ttft_p95_max_s:g} s, ITL p95 <= {slo.itl_p95_max_s:g} s, errors <= "
        f"{slo.error_rate_max:.1%}, throughput >= {slo.min_output_tokens_per_s:g} tokens/s; a regression fails when "
        f"Mann-Whitney p < {slo.alpha:g} and the median grew by more than {slo.max_relative_slowdown:.0%}.",
        "",
        _DEFINITIONS,
        "",
        _plots_section(),
    ]
    return "\n".join(lines)


def _summaries_from(verdict: Verdict) -> dict[str, Summary]:
    return {
        f"{verdict.baseline} (baseline)": verdict.baseline_summary,
        f"{verdict.candidate} (candidate)": verdict.candidate_summary,
    }


def run_summaries(records: Sequence[RequestRecord]) -> dict[str, Summary]:
    """A summary per serving variant, plus ``all`` when there are several."""
    groups = by_variant(records)
    summaries = {name: summarize(samples_from_records(rows)) for name, rows in groups.items()}
    if len(groups) > 1:
        summaries["all"] = summarize(samples_from_records(records))
    return summaries


def render_run_report(
    records: Sequence[RequestRecord], out_dir: Path, *, title: str, context: Mapping[str, str] | None = None
) -> ReportFiles:
    """Report of one run, grouped by the variant that served each request."""
    plots = render_plots(by_variant(records), out_dir)
    markdown = out_dir / REPORT_MD
    markdown.write_text(run_markdown(title, run_summaries(records), context or {}), encoding="utf-8")
    return ReportFiles(markdown, plots)


def render_gate_report(
    verdict: Verdict,
    baseline: Sequence[RequestRecord],
    candidate: Sequence[RequestRecord],
    out_dir: Path,
    *,
    context: Mapping[str, str] | None = None,
) -> ReportFiles:
    plots = render_plots({verdict.baseline: baseline, verdict.candidate: candidate}, out_dir)
    markdown = out_dir / REPORT_MD
    markdown.write_text(gate_markdown(verdict, context or {}), encoding="utf-8")
    return ReportFiles(markdown, plots)
