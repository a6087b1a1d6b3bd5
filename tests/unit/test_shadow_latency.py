"""The shadow latency benchmark's pure parts: phase summaries, pooled on/off ratios, the config it deploys."""

from __future__ import annotations

import argparse

from loadtests.bench import Sample
from loadtests.shadow_latency import PRIMARY, SHADOW, app_config, markdown, phase_result, pooled


def samples(ttft_s: float, e2e_s: float, n: int = 20, failures: int = 0) -> list[Sample]:
    good = [Sample(ok=True, ttft_s=ttft_s, e2e_s=e2e_s, tokens=8) for _ in range(n)]
    return good + [Sample(ok=False) for _ in range(failures)]


def test_phase_result_counts_failures_and_ignores_them_in_percentiles():
    result = phase_result(1, True, samples(0.05, 0.5, failures=2), copies=18)
    assert (result.requests, result.failures, result.shadow_copies) == (22, 2, 18)
    assert (result.ttft_p50_ms, result.e2e_p95_ms) == (50.0, 500.0)


def test_pooled_ratios_are_on_over_off_from_all_samples():
    rows = {row.metric: row for row in pooled([], {False: samples(0.1, 1.0), True: samples(0.15, 1.0)})}
    assert rows["TTFT p50"].ratio == 1.5
    assert rows["e2e p95"].ratio == 1.0
    empty = pooled([], {False: [], True: samples(0.1, 1.0)})
    assert all(row.ratio is None for row in empty)


def test_markdown_names_the_command_and_every_phase():
    args = argparse.Namespace(engine="sim", rounds=1, duration=5.0, concurrency=2, max_tokens=8, fraction=1.0)
    phases = [phase_result(1, False, samples(0.1, 1.0), 0), phase_result(1, True, samples(0.1, 1.0), 20)]
    text = markdown(args, phases, pooled(phases, {False: samples(0.1, 1.0), True: samples(0.1, 1.0)}))
    assert "--engine sim --rounds 1 --duration 5" in text
    assert "| 1 | on | 20 | 0 |" in text


def test_app_config_puts_all_traffic_on_the_primary_and_shadows_only_when_asked():
    off = app_config("sim", 8123, None)
    on = app_config("sim", 8123, 0.5)
    assert off.weights == {PRIMARY: 100.0, SHADOW: 0.0}
    assert off.shadow is None
    assert on.shadow is not None and (on.shadow.variant, on.shadow.fraction) == (SHADOW, 0.5)
    assert all(v.backend == "sim" for v in on.variants)
    assert all(v.backend == "vllm" for v in app_config("vllm", 8123, 0.5).variants)
