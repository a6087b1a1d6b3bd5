"""The release gate: SLOs from a YAML file, and a pure verdict over a baseline's and a candidate's samples.

The verdict has three kinds of checks:

- **slo**: the candidate alone against absolute limits (p95 TTFT, p95 ITL, error rate, output tokens/s).
- **regression**: candidate against baseline for TTFT and ITL. A regression fails the gate only when it is both
  *significant* (one-sided Mann-Whitney U, candidate stochastically greater, ``p < alpha``) and *material* (the
  candidate's median is more than ``1 + max_relative_slowdown`` times the baseline's). Significance alone would
  fail releases over a 1 % slowdown measured on many samples; size alone would fail them over noise on a few.
  A seeded bootstrap gives a ``1 - alpha`` confidence interval for the ratio of medians (and of p95s) so that a
  reader sees how sure the verdict is.
- **sanity**: enough samples on both sides, and each run served by the variant it pinned; a gate that compared
  the wrong variants, or a handful of requests, must not pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadtests.samples import Samples, Summary, percentile, summarize

DEFAULT_SLO_PATH = Path(__file__).resolve().parent / "slo.yaml"


class SLOError(ValueError):
    """An SLO file that cannot be used; the message names the file and the field."""


class SLO(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_p95_max_s: float = Field(gt=0, description="Highest allowed 95th percentile time to first token.")
    itl_p95_max_s: float = Field(gt=0, description="Highest allowed 95th percentile inter-token latency.")
    error_rate_max: float = Field(ge=0, le=1, description="Highest allowed share of failed requests.")
    min_output_tokens_per_s: float = Field(ge=0, description="Lowest allowed output-token throughput of the run.")
    max_relative_slowdown: float = Field(
        ge=0, description="Allowed growth of the candidate's median TTFT/ITL over the baseline's (0.2 = 20 %)."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level of the regression tests.")
    min_samples: int = Field(default=20, ge=3, description="Fewest successful requests each run must have.")
    bootstrap_resamples: int = Field(default=2000, ge=100, description="Bootstrap resamples for the CIs.")
    seed: int = Field(default=0, description="Seed of the bootstrap, so a verdict is reproducible.")


def load_slo(path: Path = DEFAULT_SLO_PATH) -> SLO:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SLOError(f"{path}: cannot read SLO file: {error}") from None
    try:
        return SLO.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())
        raise SLOError(f"{path}: {problems}") from None


Number = float | int | str | None


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["slo", "regression", "sanity"]
    passed: bool
    observed: float | None = Field(description="The candidate's number this check is about.")
    limit: float | None = Field(description="The bound it was held to.")
    message: str
    details: dict[str, Number] = Field(default_factory=dict)


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    baseline: str
    candidate: str
    slo: SLO
    baseline_summary: Summary
    candidate_summary: Summary
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "n/a"
    return f"{value * 1000:.0f} ms" if unit == "s" and value < 1 else f"{value:.3g} {unit}".rstrip()


def _upper_bound(name: str, observed: float | None, limit: float, unit: str = "s") -> Check:
    passed = observed is not None and observed <= limit
    if observed is None:
        message = f"{name}: no successful requests to measure (limit {_fmt(limit, unit)})"
    else:
        message = f"{name} {_fmt(observed, unit)} {'within' if passed else 'over'} the limit of {_fmt(limit, unit)}"
    return Check(name=name, kind="slo", passed=passed, observed=observed, limit=limit, message=message)


def slo_checks(candidate: Samples, slo: SLO) -> list[Check]:
    throughput = candidate.output_tokens_per_s
    return [
        _upper_bound("ttft_p95", percentile(candidate.ttft_s, 95), slo.ttft_p95_max_s),
        _upper_bound("itl_p95", percentile(candidate.itl_s, 95), slo.itl_p95_max_s),
        Check(
            name="error_rate",
            kind="slo",
            passed=candidate.requests > 0 and candidate.error_rate <= slo.error_rate_max,
            observed=candidate.error_rate,
            limit=slo.error_rate_max,
            message=f"error rate {candidate.error_rate:.2%} ({candidate.errors}/{candidate.requests}), "
            f"limit {slo.error_rate_max:.2%}",
        ),
        Check(
            name="output_tokens_per_s",
            kind="slo",
            passed=throughput >= slo.min_output_tokens_per_s,
            observed=throughput,
            limit=slo.min_output_tokens_per_s,
            message=f"throughput {throughput:.1f} output tokens/s, minimum {slo.min_output_tokens_per_s:g}",
        ),
    ]


Statistic = Callable[[Any], Any]
"""Reduces a ``(resamples, n)`` array along axis 1."""


def _median(a: Any) -> Any:
    return np.median(a, axis=-1)


def _p95(a: Any) -> Any:
    return np.percentile(a, 95, axis=-1)


def bootstrap_ratio_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    statistic: Statistic = _median,
    resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` CI of ``statistic(candidate) / statistic(baseline)``.

    Each side is resampled on its own (the runs are independent). Resamples are drawn in batches so that a long
    run's tens of thousands of samples do not need a resamples-by-n array in memory at once.
    """
    rng = np.random.default_rng(seed)
    base, cand = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    batch = max(1, 2_000_000 // max(len(base), len(cand)))
    ratios: list[Any] = []
    for done in range(0, resamples, batch):
        size = min(batch, resamples - done)
        b = statistic(base[rng.integers(0, len(base), size=(size, len(base)))])
        c = statistic(cand[rng.integers(0, len(cand), size=(size, len(cand)))])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(c / b)
    all_ratios = np.concatenate(ratios)
    low, high = np.nanpercentile(all_ratios, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def mann_whitney_greater(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """One-sided p-value that the candidate's values tend to be larger than the baseline's."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(candidate, baseline, alternative="greater").pvalue)


def regression_check(name: str, baseline: Sequence[float], candidate: Sequence[float], slo: SLO) -> Check:
    limit = 1 + slo.max_relative_slowdown
    if min(len(baseline), len(candidate)) < slo.min_samples:
        return Check(
            name=f"{name}_regression",
            kind="regression",
            passed=False,
            observed=None,
            limit=limit,
            message=f"{name}: too few samples to compare (baseline {len(baseline)}, candidate {len(candidate)}, "
            f"need {slo.min_samples} each)",
        )
    base_median, cand_median = float(np.median(baseline)), float(np.median(candidate))
    ratio = cand_median / base_median if base_median > 0 else float("inf")
    p_value = mann_whitney_greater(baseline, candidate)
    ci = partial(
        bootstrap_ratio_ci, baseline, candidate, resamples=slo.bootstrap_resamples, alpha=slo.alpha, seed=slo.seed
    )
    ci_low, ci_high = ci(statistic=_median)
    p95_low, p95_high = ci(statistic=_p95)
    base_p95, cand_p95 = percentile(baseline, 95), percentile(candidate, 95)
    significant, material = p_value < slo.alpha, ratio > limit
    passed = not (significant and material)
    if passed and significant:
        why = f"slower (p={p_value:.2g}) but within the {slo.max_relative_slowdown:.0%} allowed"
    elif passed:
        why = f"no significant slowdown (p={p_value:.2g} >= {slo.alpha:g})"
    else:
        why = (
            f"significantly slower (p={p_value:.2g} < {slo.alpha:g}) beyond the {slo.max_relative_slowdown:.0%} allowed"
        )
    return Check(
        name=f"{name}_regression",
        kind="regression",
        passed=passed,
        observed=ratio,
        limit=limit,
        message=f"{name}: candidate median {_fmt(cand_median)} vs baseline {_fmt(base_median)} "
        f"(x{ratio:.2f}, {1 - slo.alpha:.0%} CI x{ci_low:.2f}-x{ci_high:.2f}); {why}",
        details={
            "baseline_median_s": base_median,
            "candidate_median_s": cand_median,
            "median_ratio": ratio,
            "median_ratio_ci_low": ci_low,
            "median_ratio_ci_high": ci_high,
            "baseline_p95_s": base_p95,
            "candidate_p95_s": cand_p95,
            "p95_ratio": (cand_p95 / base_p95) if base_p95 and cand_p95 is not None else None,
            "p95_ratio_ci_low": p95_low,
            "p95_ratio_ci_high": p95_high,
            "mann_whitney_p": p_value,
            "baseline_n": len(baseline),
            "candidate_n": len(candidate),
        },
    )


def pinning_check(role: str, variant: str, samples: Samples) -> Check:
    """The run meant to measure ``variant`` was served by it alone (the pin header worked)."""
    served = set(samples.served_by)
    passed = served == {variant}
    return Check(
        name=f"{role}_served_by_{variant}",
        kind="sanity",
        passed=passed,
        observed=None,
        limit=None,
        message=f"{role} run served by {', '.join(sorted(served)) or 'nobody'}"
        + ("" if passed else f", expected only {variant}"),
    )


def verdict(
    baseline: Samples,
    candidate: Samples,
    slo: SLO,
    *,
    baseline_name: str = "baseline",
    candidate_name: str = "candidate",
    check_pinning: bool = True,
) -> Verdict:
    """Every check of the gate on the two runs; the verdict passes only if every check does."""
    checks = slo_checks(candidate, slo)
    checks.append(regression_check("ttft", baseline.ttft_s, candidate.ttft_s, slo))
    checks.append(regression_check("itl", baseline.itl_s, candidate.itl_s, slo))
    if check_pinning:
        checks.append(pinning_check("baseline", baseline_name, baseline))
        checks.append(pinning_check("candidate", candidate_name, candidate))
    return Verdict(
        passed=all(c.passed for c in checks),
        baseline=baseline_name,
        candidate=candidate_name,
        slo=slo,
        baseline_summary=summarize(baseline),
        candidate_summary=summarize(candidate),
        checks=checks,
    )
