"""Fitting the simulated engine's costs: the pure parts of loadtests/calibrate_sim.py (no vLLM is started)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from deployments.sim_model import SimArrival, SimEngineConfig, simulate
from loadtests.calibrate_sim import (
    CalibrationReport,
    GridPoint,
    Measurement,
    TimingFit,
    calibration_grid,
    fit_timing,
    predicted_ms,
    random_prompts,
    sim_config,
    sim_yaml,
    write_report,
)

TRUE = SimEngineConfig(base_step_ms=5.2, per_seq_step_ms=0.37, prefill_ms_per_token=0.045)
GRID = calibration_grid([1, 4, 16, 64], [16, 128, 512], [16, 64], max_model_len=1024)


def measured(config: SimEngineConfig, points: list[GridPoint], noise: float = 0.0, seed: int = 0) -> list[Measurement]:
    rng = random.Random(seed)
    return [
        Measurement(**p.model_dump(), elapsed_ms=predicted_ms(config, p) * (1 + rng.gauss(0, noise))) for p in points
    ]


def test_grid_is_every_combination_that_fits_the_context() -> None:
    grid = calibration_grid([4, 1, 4], [100, 900], [16, 200], max_model_len=1024)
    assert [(p.batch_size, p.prompt_tokens, p.output_tokens) for p in grid] == [
        (1, 100, 16),
        (1, 100, 200),
        (1, 900, 16),
        (4, 100, 16),
        (4, 100, 200),
        (4, 900, 16),
    ]


def test_exact_measurements_give_back_the_costs() -> None:
    fit = fit_timing(measured(TRUE, GRID))
    assert fit.base_step_ms == pytest.approx(5.2)
    assert fit.per_seq_step_ms == pytest.approx(0.37)
    assert fit.prefill_ms_per_token == pytest.approx(0.045)
    assert fit.r_squared == pytest.approx(1.0) and fit.rmse_ms == pytest.approx(0, abs=1e-6)
    assert fit.pinned_to_zero == ()


def test_the_formula_is_what_the_simulator_charges() -> None:
    # Measure the simulator itself as the script measures vLLM: the fit must find the simulator's own costs.
    points = calibration_grid([1, 3, 8], [10, 40], [5, 20], max_model_len=1024)
    runs = []
    for p in points:
        arrivals = [SimArrival(0, p.prompt_tokens, p.output_tokens, key=i) for i in range(p.batch_size)]
        runs.append(Measurement(**p.model_dump(), elapsed_ms=simulate(TRUE, arrivals).makespan_ms))
    fit = fit_timing(runs)
    assert (fit.base_step_ms, fit.per_seq_step_ms, fit.prefill_ms_per_token) == pytest.approx((5.2, 0.37, 0.045))


def test_noisy_measurements_fit_closely() -> None:
    fit = fit_timing(measured(TRUE, GRID * 3, noise=0.03, seed=5))
    assert fit.base_step_ms == pytest.approx(5.2, rel=0.15)
    assert fit.per_seq_step_ms == pytest.approx(0.37, rel=0.1)
    assert fit.prefill_ms_per_token == pytest.approx(0.045, rel=0.1)
    assert fit.r_squared > 0.99
    assert 0.01 < fit.max_relative_error < 0.2


def test_a_cost_the_data_make_negative_is_pinned_to_zero() -> None:
    # Elapsed time that falls with prompt length: the unconstrained fit wants a negative prefill cost.
    runs = [
        Measurement(**p.model_dump(), elapsed_ms=p.output_tokens * (5 + 0.4 * p.batch_size) - 0.002 * p.prompt_tokens)
        for p in GRID
    ]
    fit = fit_timing(runs)
    assert fit.pinned_to_zero == ("prefill_ms_per_token",)
    assert fit.prefill_ms_per_token == 0
    assert fit.base_step_ms > 0 and fit.per_seq_step_ms > 0
    assert fit.r_squared > 0.99


def test_measurements_that_cannot_separate_the_costs_are_refused() -> None:
    one_batch_size = calibration_grid([8], [16, 128], [16, 64], max_model_len=1024)
    with pytest.raises(ValueError, match="separate"):
        fit_timing(measured(TRUE, one_batch_size))
    with pytest.raises(ValueError, match="separate"):
        fit_timing(measured(TRUE, GRID[:2]))


def test_random_prompts_share_no_prefix_and_repeat_with_the_seed() -> None:
    prompts = random_prompts(random.Random(1), 64, 20, vocab_size=4096)
    assert len(prompts) == 64 and all(len(p) == 20 for p in prompts)
    assert len({p[0] for p in prompts}) == 64
    assert all(3 <= token < 4096 for p in prompts for token in p)
    assert prompts == random_prompts(random.Random(1), 64, 20, vocab_size=4096)
    with pytest.raises(ValueError):
        random_prompts(random.Random(1), 10, 5, vocab_size=8)


def test_report_round_trips_and_carries_a_usable_sim_config(tmp_path) -> None:
    runs = measured(TRUE, GRID)
    fit = fit_timing(runs)
    sim = sim_config(fit, kv_capacity_tokens=131_072, max_num_seqs=64)
    report = CalibrationReport(
        variant="tiny-v1",
        model="builtin:tiny-v1",
        vllm_version="0.32.0",
        created_at="2025-01-01T00:00:00+00:00",
        machine={"cpus": 2},
        engine_args={"max_num_seqs": 64, "enable_prefix_caching": False},
        kv_capacity_tokens=131_072,
        measurements=runs,
        fit=fit,
        sim=sim,
    )
    path = tmp_path / "calibration" / "sim.json"
    write_report(report, path)
    loaded = CalibrationReport.model_validate(json.loads(path.read_text()))
    assert loaded == report
    assert loaded.sim.per_seq_step_ms == pytest.approx(0.37) and loaded.sim.kv_capacity_tokens == 131_072
    assert isinstance(loaded.fit, TimingFit)
    snippet = sim_yaml(sim)
    assert snippet.startswith("sim:\n") and "per_seq_step_ms" in snippet


def test_importing_the_script_starts_no_engine_library() -> None:
    code = "import sys, loadtests.calibrate_sim; print(sorted({'vllm', 'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
