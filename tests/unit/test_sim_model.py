"""The simulated engine's pure scheduling model: costs, batching, KV limits, preemption, determinism."""

from __future__ import annotations

import itertools
import random

import pytest
from pydantic import ValidationError

from deployments.sim_model import LoadSignals, SimArrival, SimEngineConfig, SimScheduler, StepResult, simulate


def burst(n: int, prompt_len: int = 16, max_tokens: int = 32, at_ms: float = 0.0) -> list[SimArrival]:
    return [SimArrival(at_ms, prompt_len, max_tokens, key=i) for i in range(n)]


def run_to_end(scheduler: SimScheduler) -> list[StepResult]:
    steps = []
    while (result := scheduler.step()) is not None:
        steps.append(result)
        assert len(steps) < 100_000
    return steps


def test_step_cost_is_linear_in_batch_and_prefill() -> None:
    config = SimEngineConfig(base_step_ms=4, per_seq_step_ms=0.5, prefill_ms_per_token=0.01)
    assert config.step_ms(1) == 4.5
    assert config.step_ms(10, prefill_tokens=300) == pytest.approx(4 + 5 + 3)


def test_config_is_validated() -> None:
    with pytest.raises(ValidationError):
        SimEngineConfig(max_num_seqs=0)
    with pytest.raises(ValidationError):
        SimEngineConfig(eos_probability=1.0)
    with pytest.raises(ValidationError):
        SimEngineConfig(unknown_field=1)


def test_one_request_first_token_comes_out_of_its_prefill_step() -> None:
    config = SimEngineConfig(base_step_ms=5, per_seq_step_ms=1, prefill_ms_per_token=0.1)
    run = simulate(config, [SimArrival(at_ms=1000, prompt_len=50, max_tokens=4)])
    (trace,) = run.requests
    assert trace.ttft_ms == pytest.approx(5 + 1 + 0.1 * 50)  # idle time before the arrival is skipped
    assert trace.e2e_ms == pytest.approx(trace.ttft_ms + 3 * 6)
    assert trace.mean_itl_ms == pytest.approx(6)
    assert (trace.output_tokens, trace.finish_reason, run.steps) == (4, "length", 4)


def test_throughput_grows_with_batch_then_saturates() -> None:
    config = SimEngineConfig(base_step_ms=5, per_seq_step_ms=0.4, prefill_ms_per_token=0.0)
    rates = {
        n: simulate(config.model_copy(update={"max_num_seqs": n}), burst(128)).tokens_per_s
        for n in (1, 2, 8, 32, 64, 128)
    }
    sizes = sorted(rates)
    assert all(rates[a] < rates[b] for a, b in itertools.pairwise(sizes))
    # Doubling a small batch nearly doubles throughput; doubling a large one gains little: the per-sequence
    # cost dominates and the rate approaches its ceiling of 1000 / per_seq_step_ms tokens per second.
    assert rates[2] / rates[1] > 1.8
    assert rates[128] / rates[64] < 1.15
    assert rates[128] < 1000 / 0.4


def test_kv_capacity_caps_the_batch_and_throughput() -> None:
    # Each request needs up to 10 + 10 tokens of KV; 200 tokens hold about 10 of them, so raising
    # max_num_seqs past that changes nothing.
    config = SimEngineConfig(kv_capacity_tokens=200, base_step_ms=5, per_seq_step_ms=0.4)
    work = burst(64, prompt_len=10, max_tokens=10)
    limited = simulate(config.model_copy(update={"max_num_seqs": 64}), work)
    unlimited = simulate(config.model_copy(update={"max_num_seqs": 128}), work)
    assert limited.peak_batch < 64
    assert limited.tokens_per_s == unlimited.tokens_per_s
    assert limited.peak_kv_usage <= 1.0


def test_requests_queue_while_the_kv_cache_is_full() -> None:
    scheduler = SimScheduler(SimEngineConfig(kv_capacity_tokens=45, max_num_seqs=64))
    for i in range(5):
        scheduler.submit(f"r{i}", prompt_len=10, max_tokens=10)
    first = scheduler.step()
    assert first is not None
    # Admission needs the prompt plus one slot: 4 x 11 = 44 fits in 45, a fifth does not.
    assert first.admitted == ("r0", "r1", "r2", "r3")
    signals = scheduler.signals()
    assert (signals.num_running, signals.num_waiting) == (4, 1)
    assert signals.kv_used_tokens == 44
    assert signals.kv_usage == pytest.approx(44 / 45)
    steps = run_to_end(scheduler)
    assert {e.request_id for s in [first, *steps] for e in s.tokens if e.finish_reason} == {f"r{i}" for i in range(5)}
    assert scheduler.signals().kv_used_tokens == 0


def test_preemption_returns_the_newest_sequence_to_the_queue_and_recomputes_it() -> None:
    scheduler = SimScheduler(SimEngineConfig(kv_capacity_tokens=10, base_step_ms=1, per_seq_step_ms=0))
    scheduler.submit("a", prompt_len=4, max_tokens=6)
    scheduler.submit("b", prompt_len=4, max_tokens=6)
    steps = run_to_end(scheduler)
    assert steps[0].admitted == ("a", "b") and steps[0].prefill_tokens == 8
    # Both now hold 5 tokens; the next token needs 2 more slots than the 10 there are: b, admitted last, goes.
    assert steps[1].preempted == ("b",) and steps[1].admitted == ()
    assert [e.request_id for e in steps[1].tokens] == ["a"]
    readmitted = next(s for s in steps if s.admitted == ("b",))
    assert readmitted.prefill_tokens == 5  # its prompt and the token it had already produced
    tokens = {rid: sum(e.request_id == rid for s in steps for e in s.tokens) for rid in ("a", "b")}
    assert tokens == {"a": 6, "b": 6}
    assert all(s.kv_peak_tokens <= 10 for s in steps)


def test_no_request_is_lost_under_pressure() -> None:
    rng = random.Random(7)
    arrivals = [
        SimArrival(at_ms=rng.uniform(0, 2000), prompt_len=rng.randint(1, 300), max_tokens=rng.randint(1, 200), key=i)
        for i in range(400)
    ]
    config = SimEngineConfig(kv_capacity_tokens=4000, max_num_seqs=32, eos_probability=0.0)
    run = simulate(config, arrivals)
    assert len(run.requests) == len(arrivals)
    assert [r.output_tokens for r in run.requests] == [a.max_tokens for a in arrivals]
    assert all(r.finish_reason == "length" for r in run.requests)
    assert run.output_tokens == sum(a.max_tokens for a in arrivals)
    assert all(r.arrival_ms < r.first_token_ms <= r.finish_ms for r in run.requests)
    assert sum(r.preemptions for r in run.requests) > 0  # the cache really was contended
    assert run.peak_kv_usage <= 1.0 and run.peak_batch <= 32 and run.peak_waiting > 0


def test_batch_never_exceeds_max_num_seqs_and_kv_never_exceeds_capacity() -> None:
    config = SimEngineConfig(kv_capacity_tokens=500, max_num_seqs=8)
    scheduler = SimScheduler(config)
    rng = random.Random(3)
    for i in range(60):
        scheduler.submit(f"r{i}", prompt_len=rng.randint(1, 100), max_tokens=rng.randint(1, 100), key=i)
    for result in run_to_end(scheduler):
        assert result.batch_size <= 8
        assert result.kv_peak_tokens <= 500
        assert 0 <= scheduler.signals().kv_used_tokens <= 500


def tokens_by_request(config: SimEngineConfig, keys: list[int]) -> dict[int, list[int]]:
    scheduler = SimScheduler(config)
    for key in keys:
        scheduler.submit(str(key), prompt_len=20, max_tokens=30, key=key)
    out: dict[int, list[int]] = {key: [] for key in keys}
    for result in run_to_end(scheduler):
        for event in result.tokens:
            out[int(event.request_id)].append(event.token_id)
    return out


def test_output_depends_on_seed_and_key_only_not_on_batching_or_preemption() -> None:
    keys = list(range(12))
    alone = tokens_by_request(SimEngineConfig(max_num_seqs=1), keys)
    crowded = tokens_by_request(SimEngineConfig(max_num_seqs=12, kv_capacity_tokens=120), keys)
    assert alone == crowded
    assert len({tuple(tokens) for tokens in alone.values()}) == len(keys)
    other_seed = tokens_by_request(SimEngineConfig(seed=1, max_num_seqs=1), keys)
    assert other_seed != alone


def test_simulation_is_deterministic() -> None:
    config = SimEngineConfig(kv_capacity_tokens=3000, eos_probability=0.05, seed=11)
    rng = random.Random(1)
    arrivals = [SimArrival(rng.uniform(0, 500), rng.randint(1, 200), rng.randint(1, 100), key=i) for i in range(100)]
    assert simulate(config, arrivals) == simulate(config, arrivals)


def test_eos_probability_ends_some_answers_early() -> None:
    run = simulate(SimEngineConfig(eos_probability=0.1), burst(50, max_tokens=100))
    early = [r for r in run.requests if r.finish_reason == "stop"]
    assert early and all(r.output_tokens < 100 for r in early)
    assert all(r.output_tokens == 100 for r in run.requests if r.finish_reason == "length")


def test_abort_frees_the_slot_and_kv_wherever_the_request_is() -> None:
    scheduler = SimScheduler(SimEngineConfig(max_num_seqs=1))
    scheduler.submit("a", prompt_len=10, max_tokens=100)
    scheduler.submit("b", prompt_len=10, max_tokens=3)
    scheduler.submit("c", prompt_len=10, max_tokens=3)
    scheduler.step()
    assert scheduler.signals().num_waiting == 2
    assert scheduler.abort("c")  # waiting
    assert scheduler.abort("a")  # running
    assert scheduler.signals() == LoadSignals(0, 1, 0, scheduler.config.kv_capacity_tokens)
    assert not scheduler.abort("a") and not scheduler.abort("nobody")
    steps = run_to_end(scheduler)
    assert steps[0].admitted == ("b",) and len(steps) == 3


def test_submit_refuses_requests_the_engine_could_never_finish() -> None:
    scheduler = SimScheduler(SimEngineConfig(kv_capacity_tokens=100))
    with pytest.raises(ValueError, match="KV cache"):
        scheduler.submit("big", prompt_len=60, max_tokens=41)
    with pytest.raises(ValueError, match="prompt token"):
        scheduler.submit("empty", prompt_len=0, max_tokens=1)
    with pytest.raises(ValueError, match="max_tokens"):
        scheduler.submit("none", prompt_len=1, max_tokens=0)
    scheduler.submit("fits", prompt_len=60, max_tokens=40)
    with pytest.raises(ValueError, match="already"):
        scheduler.submit("fits", prompt_len=1, max_tokens=1)
    assert len(run_to_end(scheduler)) == 40


def test_arrivals_during_a_step_wait_for_the_next_step() -> None:
    config = SimEngineConfig(base_step_ms=10, per_seq_step_ms=0, prefill_ms_per_token=0)
    run = simulate(config, [SimArrival(0, 5, 3), SimArrival(4, 5, 3)])
    first, second = run.requests
    assert first.first_token_ms == 10
    assert second.first_token_ms == 20  # arrived at 4 ms, inside the first step: admitted at its end
    assert run.makespan_ms == 40
