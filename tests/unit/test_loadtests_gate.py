import json
import random

import numpy as np
import pytest

from loadtests.gate import (
    DEFAULT_SLO_PATH,
    SLO,
    SLOError,
    bootstrap_ratio_ci,
    load_slo,
    mann_whitney_greater,
    verdict,
)
from loadtests.records import RequestRecord
from loadtests.samples import Samples, percentile, samples_from_records, throughput_series

SLO_FOR_TESTS = SLO(
    ttft_p95_max_s=2.0,
    itl_p95_max_s=0.2,
    error_rate_max=0.02,
    min_output_tokens_per_s=10,
    max_relative_slowdown=0.2,
    alpha=0.05,
    min_samples=20,
    bootstrap_resamples=500,
)


def synthetic(
    *, slowdown: float = 1.0, n: int = 300, seed: int = 0, errors: int = 0, variant: str = "v", tokens: int = 64
) -> Samples:
    """Lognormal TTFT (median ~0.5 s) and ITL (median ~50 ms), scaled by ``slowdown``."""
    rng = random.Random(seed)
    ttft = tuple(rng.lognormvariate(-0.7, 0.35) * slowdown for _ in range(n))
    itl = tuple(rng.lognormvariate(-3.0, 0.25) * slowdown for _ in range(n))
    return Samples(
        ttft_s=ttft,
        itl_s=itl,
        e2e_s=ttft,
        requests=n + errors,
        errors=errors,
        output_tokens=n * tokens,
        duration_s=120.0,
        served_by=(variant,),
    )


def checks_by_name(result):
    return {c.name: c for c in result.checks}


def test_candidate_equal_to_baseline_passes():
    for seed in range(5):
        baseline = synthetic(seed=seed, variant="a")
        candidate = synthetic(seed=seed + 100, variant="b")
        result = verdict(baseline, candidate, SLO_FOR_TESTS, baseline_name="a", candidate_name="b")
        assert result.passed, [c.message for c in result.failures]


def test_identical_samples_pass_with_a_ratio_of_one():
    same = synthetic(variant="a")
    result = verdict(same, same, SLO_FOR_TESTS, check_pinning=False)
    ttft = checks_by_name(result)["ttft_regression"]
    assert result.passed
    assert ttft.observed == pytest.approx(1.0)
    assert ttft.details["median_ratio_ci_low"] <= 1.0 <= ttft.details["median_ratio_ci_high"]
    assert ttft.details["mann_whitney_p"] > 0.4


def test_clearly_slower_candidate_fails_both_regressions():
    result = verdict(synthetic(seed=1), synthetic(slowdown=1.6, seed=2), SLO_FOR_TESTS, check_pinning=False)
    checks = checks_by_name(result)
    assert not result.passed
    for name in ("ttft_regression", "itl_regression"):
        assert not checks[name].passed
        assert checks[name].observed == pytest.approx(1.6, rel=0.1)
        assert checks[name].details["median_ratio_ci_low"] > 1.2
        assert checks[name].details["mann_whitney_p"] < 1e-6
        assert "significantly slower" in checks[name].message


def test_significant_but_small_slowdown_is_tolerated():
    # 8 % slower on many samples: significant, but inside the 20 % allowed.
    result = verdict(
        synthetic(n=3000, seed=1), synthetic(n=3000, slowdown=1.08, seed=2), SLO_FOR_TESTS, check_pinning=False
    )
    ttft = checks_by_name(result)["ttft_regression"]
    assert ttft.details["mann_whitney_p"] < 0.05
    assert ttft.passed and "within the 20% allowed" in ttft.message


def test_large_but_noisy_difference_on_few_samples_is_not_significant():
    # With 20 samples a side, a 25 % shift of a wide distribution is not distinguishable from noise.
    wide = SLO_FOR_TESTS.model_copy(update={"min_samples": 5})
    rng = random.Random(4)
    base = tuple(rng.lognormvariate(0, 1.2) for _ in range(20))
    cand = tuple(rng.lognormvariate(0, 1.2) * 1.25 for _ in range(20))
    assert mann_whitney_greater(base, cand) > 0.05
    samples = [Samples(x, x, x, 20, 0, 2000, 10.0, ("v",)) for x in (base, cand)]
    check = checks_by_name(verdict(*samples, wide, check_pinning=False))["ttft_regression"]
    assert check.passed and "no significant slowdown" in check.message


def test_faster_candidate_passes():
    result = verdict(synthetic(seed=1), synthetic(slowdown=0.6, seed=2), SLO_FOR_TESTS, check_pinning=False)
    assert result.passed


def test_slo_breaches_are_detected_on_the_candidate():
    slow_tail = synthetic(slowdown=5.0, seed=3, errors=30, tokens=1)
    result = verdict(slow_tail, slow_tail, SLO_FOR_TESTS, check_pinning=False)
    checks = checks_by_name(result)
    assert not checks["ttft_p95"].passed and checks["ttft_p95"].observed > 2.0
    assert not checks["itl_p95"].passed
    assert not checks["error_rate"].passed and checks["error_rate"].observed == pytest.approx(30 / 330)
    assert not checks["output_tokens_per_s"].passed and checks["output_tokens_per_s"].observed == pytest.approx(2.5)
    assert checks["ttft_regression"].passed  # same samples on both sides: no regression, only SLO breaches
    assert not result.passed


def test_slos_apply_to_the_candidate_not_the_baseline():
    result = verdict(synthetic(slowdown=5.0, errors=50), synthetic(), SLO_FOR_TESTS, check_pinning=False)
    assert result.passed


def test_too_few_samples_fail_rather_than_pass():
    result = verdict(synthetic(n=10), synthetic(n=10), SLO_FOR_TESTS, check_pinning=False)
    check = checks_by_name(result)["ttft_regression"]
    assert not check.passed and "too few samples" in check.message


def test_no_requests_at_all_fail_every_slo():
    empty = Samples((), (), (), 0, 0, 0, 0.0)
    result = verdict(synthetic(), empty, SLO_FOR_TESTS, check_pinning=False)
    assert all(not c.passed for c in result.checks if c.kind == "slo")
    assert "no successful requests" in checks_by_name(result)["ttft_p95"].message


def test_pinning_check_catches_a_run_served_by_the_wrong_variant():
    result = verdict(
        synthetic(variant="tiny-v1"),
        synthetic(variant="tiny-v1"),
        SLO_FOR_TESTS,
        baseline_name="tiny-v1",
        candidate_name="tiny-v2",
    )
    checks = checks_by_name(result)
    assert checks["baseline_served_by_tiny-v1"].passed
    assert not checks["candidate_served_by_tiny-v2"].passed
    assert not result.passed


def test_bootstrap_is_seeded_and_brackets_the_true_ratio():
    rng = random.Random(0)
    base = [rng.gauss(10, 1) for _ in range(400)]
    cand = [x * 1.5 for x in (rng.gauss(10, 1) for _ in range(400))]
    ci = bootstrap_ratio_ci(base, cand, resamples=1000, seed=1)
    assert ci == bootstrap_ratio_ci(base, cand, resamples=1000, seed=1)
    assert ci[0] < 1.5 < ci[1]
    assert ci[1] - ci[0] < 0.1


def test_verdict_is_reproducible_and_serializes_to_json():
    a, b = synthetic(seed=1, variant="a"), synthetic(seed=2, slowdown=1.3, variant="b")
    first = verdict(a, b, SLO_FOR_TESTS, baseline_name="a", candidate_name="b")
    assert first == verdict(a, b, SLO_FOR_TESTS, baseline_name="a", candidate_name="b")
    data = json.loads(first.to_json())
    assert data["passed"] is False
    assert data["candidate"] == "b" and data["slo"]["alpha"] == 0.05
    assert {c["name"] for c in data["checks"]} >= {"ttft_p95", "itl_p95", "error_rate", "ttft_regression"}
    assert all({"passed", "observed", "limit", "message"} <= set(c) for c in data["checks"])
    assert data["candidate_summary"]["requests"] == 300


def test_default_slo_file_is_valid():
    slo = load_slo(DEFAULT_SLO_PATH)
    assert 1 <= slo.ttft_p95_max_s <= 10
    assert 0 < slo.max_relative_slowdown < 1


def test_slo_file_refuses_unknown_and_missing_fields(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text(
        "ttft_p95_max_s: 1\nitl_p95_max_s: 0.1\nerror_rate_max: 0.01\nmin_output_tokens_per_s: 1\n"
        "max_relative_slowdown: 0.1\nttft_p99_max_s: 3\n"
    )
    with pytest.raises(SLOError, match="ttft_p99_max_s: Extra inputs are not permitted"):
        load_slo(path)
    path.write_text("ttft_p95_max_s: 1\n")
    with pytest.raises(SLOError, match=r"slo.yaml: .*itl_p95_max_s: Field required"):
        load_slo(path)
    with pytest.raises(SLOError, match="cannot read"):
        load_slo(tmp_path / "missing.yaml")


def test_samples_from_records_count_errors_and_throughput():
    records = [
        RequestRecord(
            start_time=0, status=200, ok=True, variant="v", ttft_s=0.2, itl_s=0.05, e2e_s=2.0, output_tokens=40
        ),
        RequestRecord(
            start_time=1, status=200, ok=True, variant="v", ttft_s=0.4, itl_s=None, e2e_s=3.0, output_tokens=1
        ),
        RequestRecord(start_time=2, status=503, ok=False, error="HTTP 503"),
    ]
    samples = samples_from_records(records)
    assert samples.ttft_s == (0.2, 0.4) and samples.itl_s == (0.05,)
    assert samples.requests == 3 and samples.errors == 1
    assert samples.duration_s == pytest.approx(4.0)  # first start 0, last end 1 + 3
    assert samples.output_tokens_per_s == pytest.approx(41 / 4)
    assert samples.served_by == ("v",)


def test_percentile_interpolates_like_numpy():
    values = [random.Random(1).random() for _ in range(37)]
    assert percentile(values, 95) == pytest.approx(float(np.percentile(values, 95)))
    assert percentile([], 50) is None


def test_throughput_spreads_tokens_over_the_decode_window():
    records = [RequestRecord(start_time=0, status=200, ok=True, ttft_s=1.0, e2e_s=3.0, output_tokens=40)]
    starts, rates = throughput_series(records, bin_s=1.0)
    assert starts == [0.0, 1.0, 2.0]
    assert rates == pytest.approx([0.0, 20.0, 20.0])
    assert sum(rates) == pytest.approx(40)
