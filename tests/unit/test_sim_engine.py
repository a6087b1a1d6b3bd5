"""The simulated engine replica, run in asyncio without Ray: interface, text, stops, batching, cancellation."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from deployments.engine import EngineReplica
from deployments.sim_engine import WORDS, SimEngineReplica, StopScanner, prompt_key, token_text
from deployments.sim_model import SimEngineConfig
from deployments.types import EngineChunk, PreparedRequest, SamplingSpec
from serve_app.config import StreamConfig, VariantConfig
from serve_app.errors import EngineUnavailable, InvalidRequest

# 1 ms steps whatever the batch: tests run fast and step counts, not clocks, show the batching.
FAST = SimEngineConfig(base_step_ms=1, per_seq_step_ms=0, prefill_ms_per_token=0)
NO_COALESCING = StreamConfig(coalesce_ms=0, coalesce_per_stream_ms=0)


def make_replica(
    sim: SimEngineConfig = FAST, stream: StreamConfig = NO_COALESCING, max_model_len: int | None = 512
) -> SimEngineReplica:
    variant = VariantConfig(name="sim-a", model="builtin:tiny-v1", weight=100, engine={"max_model_len": max_model_len})
    return SimEngineReplica(variant, stream, sim=sim)


def make_request(
    prompt: list[int] | None = None, max_tokens: int = 8, stop: tuple[str, ...] = (), seed: int | None = None, rid="r"
) -> PreparedRequest:
    return PreparedRequest(
        request_id=rid,
        variant="sim-a",
        kind="completion",
        prompt_token_ids=[1, 2, 3] if prompt is None else prompt,
        sampling=SamplingSpec(max_tokens=max_tokens, stop=stop, seed=seed),
    )


def run(factory: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(factory(), timeout=30))


async def collect(replica: SimEngineReplica, request: PreparedRequest) -> list[EngineChunk]:
    return [chunk async for chunk in replica.generate_stream(request)]


# ---------------------------------------------------------------------------------------------- interface


def test_interface_matches_the_real_engine_replica() -> None:
    public = {name for name in vars(EngineReplica) if not name.startswith("_")}
    assert public == {"generate_stream", "generate", "stats", "ping", "check_health"}
    for name in public:
        real, sim = getattr(EngineReplica, name), getattr(SimEngineReplica, name)
        assert inspect.isasyncgenfunction(real) == inspect.isasyncgenfunction(sim), name
        assert inspect.iscoroutinefunction(real) == inspect.iscoroutinefunction(sim), name
        assert list(inspect.signature(real).parameters) == list(inspect.signature(sim).parameters), name
    real_init = list(inspect.signature(EngineReplica.__init__).parameters)
    sim_init = inspect.signature(SimEngineReplica.__init__).parameters
    assert list(sim_init)[: len(real_init)] == real_init
    assert all(sim_init[name].default is not inspect.Parameter.empty for name in list(sim_init)[len(real_init) :])


def test_importing_the_sim_engine_pulls_in_neither_vllm_nor_torch() -> None:
    code = "import sys, deployments.sim_engine; print(sorted({'vllm', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- text


def test_generate_honours_max_tokens_with_words_from_the_vocabulary() -> None:
    result = run(lambda: make_replica().generate(make_request(max_tokens=8)))
    words = result.text.split(" ")
    assert (result.num_tokens, result.finish_reason, len(words)) == (8, "length", 8)
    assert set(words) <= set(WORDS)


def test_text_is_deterministic_per_prompt_and_seed_whatever_shares_the_batch() -> None:
    async def scenario() -> tuple[str, str, list[str], str, str]:
        alone = (await make_replica().generate(make_request([5, 6, 7], 12))).text
        again = (await make_replica().generate(make_request([5, 6, 7], 12))).text
        replica = make_replica()
        crowd = await asyncio.gather(*(replica.generate(make_request([5, 6, 7 + i], 12, rid=str(i))) for i in range(6)))
        other_prompt = (await make_replica().generate(make_request([5, 6, 8], 12))).text
        other_seed = (await make_replica().generate(make_request([5, 6, 7], 12, seed=42))).text
        return alone, again, [r.text for r in crowd], other_prompt, other_seed

    alone, again, crowd, other_prompt, other_seed = run(scenario)
    assert alone == again == crowd[0]
    assert crowd[1] == other_prompt
    assert len(set(crowd)) == 6
    assert other_seed != alone


def test_stream_chunks_add_up_to_the_whole_result() -> None:
    async def scenario() -> tuple[list[EngineChunk], str]:
        chunks = await collect(make_replica(), make_request(max_tokens=10))
        whole = await make_replica().generate(make_request(max_tokens=10))
        return chunks, whole.text

    chunks, whole = run(scenario)
    assert "".join(c.text for c in chunks) == whole
    assert sum(c.num_tokens for c in chunks) == 10
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


def test_coalescing_follows_the_stream_config() -> None:
    wide = StreamConfig(coalesce_ms=10_000, coalesce_per_stream_ms=10_000)
    chunks = run(lambda: collect(make_replica(stream=wide), make_request(max_tokens=10)))
    # The first text goes out at once; everything after it waits for the window or the end.
    assert [c.num_tokens for c in chunks] == [1, 9]
    assert chunks[-1].finish_reason == "length"


# ---------------------------------------------------------------------------------------------- stop strings


def full_words(prompt: list[int], n: int) -> list[str]:
    return run(lambda: make_replica().generate(make_request(prompt, n))).text.split(" ")


@pytest.mark.parametrize("kind", ["word", "across_tokens"])
def test_stop_string_ends_the_output_before_it(kind: str) -> None:
    prompt = [9, 9, 9]
    words = full_words(prompt, 12)
    full = " ".join(words)
    stop = f" {words[4]}" if kind == "word" else f"{words[3][-2:]} {words[4][:2]}"
    expected = full[: full.find(stop)]
    # Tokens produced up to the one that completed the stop string, as vLLM counts them.
    produced = next(k for k in range(1, 13) if stop in " ".join(words[:k]))

    async def scenario() -> tuple[Any, list[EngineChunk], Any]:
        replica = make_replica()
        result = await replica.generate(make_request(prompt, 12, stop=(stop, "never-in-output")))
        chunks = await collect(replica, make_request(prompt, 12, stop=(stop,)))
        return result, chunks, await replica.stats()

    result, chunks, stats = run(scenario)
    assert (result.text, result.finish_reason, result.num_tokens) == (expected, "stop", produced)
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].finish_reason == "stop"
    assert stats.running_requests == 0  # the stopped sequence left the batch


def test_stop_scanner_holds_back_only_what_could_start_a_stop_string() -> None:
    scanner = StopScanner(["xyz", "qq"])
    assert scanner.feed("abcx") == ("abc", False)  # "x" could be the start of "xyz"
    assert scanner.feed("y") == ("", False)
    assert scanner.feed("a") == ("xya", False)  # no longer a near-match: released at once
    assert scanner.feed("q") == ("", False)
    assert scanner.feed("rxyzs") == ("qr", True)
    plain = StopScanner([])
    assert plain.feed("abc") == ("abc", False) and plain.flush() == ""
    ending = StopScanner(["zz"])
    assert ending.feed("az") == ("a", False) and ending.flush() == "z"


def test_token_text_and_prompt_key_are_stable() -> None:
    assert token_text(0, 0) == WORDS[0] and token_text(len(WORDS) + 1, 3) == f" {WORDS[1]}"
    assert prompt_key([1, 2, 3], None) == prompt_key([1, 2, 3], None)
    assert len({prompt_key([1, 2, 3], None), prompt_key([1, 2, 3], 0), prompt_key([1, 23], None)}) == 3


# ---------------------------------------------------------------------------------------------- batching, time


def test_concurrent_requests_share_steps_up_to_max_num_seqs() -> None:
    async def steps_for(max_num_seqs: int) -> int:
        replica = make_replica(FAST.model_copy(update={"max_num_seqs": max_num_seqs}))
        results = await asyncio.gather(*(replica.generate(make_request([i], 5, rid=str(i))) for i in range(4)))
        assert all(r.num_tokens == 5 for r in results)
        return replica.steps

    assert run(lambda: steps_for(4)) == 5
    assert run(lambda: steps_for(2)) == 10
    assert run(lambda: steps_for(1)) == 20


def test_steps_take_their_simulated_time() -> None:
    slow = SimEngineConfig(base_step_ms=20, per_seq_step_ms=0, prefill_ms_per_token=0)

    async def scenario() -> float:
        started = time.monotonic()
        await make_replica(slow).generate(make_request(max_tokens=5))
        return time.monotonic() - started

    assert run(scenario) >= 5 * 0.020 * 0.9


def test_stats_report_running_waiting_and_kv_use() -> None:
    sim = SimEngineConfig(base_step_ms=20, per_seq_step_ms=0, max_num_seqs=1, kv_capacity_tokens=1000)

    async def scenario() -> tuple[Any, Any]:
        replica = make_replica(sim)
        streams = [replica.generate_stream(make_request([1] * 10, 50, rid=str(i))) for i in range(3)]
        firsts = [asyncio.ensure_future(anext(s)) for s in streams]
        await firsts[0]
        during = await replica.stats()
        for first in firsts[1:]:
            first.cancel()
        await asyncio.gather(*firsts[1:], return_exceptions=True)
        for stream in streams:
            await stream.aclose()
        return during, await replica.stats()

    during, after = run(scenario)
    assert during.running_requests == 3 and during.healthy
    assert during.extra["num_requests_running"] == 1 and during.extra["num_requests_waiting"] == 2
    assert 0.01 <= during.extra["kv_cache_usage_perc"] <= 0.015  # 10 prompt tokens + 1-2 generated of 1000
    assert after.running_requests == 0 and after.extra["kv_cache_usage_perc"] == 0


# ---------------------------------------------------------------------------------------------- cancellation


def test_cancelled_stream_frees_its_slot_for_the_next_request() -> None:
    one_slot = SimEngineConfig(base_step_ms=2, per_seq_step_ms=0, max_num_seqs=1)

    async def scenario() -> tuple[Any, Any, Any]:
        replica = make_replica(one_slot)
        started = asyncio.Event()

        async def long_reader() -> None:
            async for _ in replica.generate_stream(make_request(max_tokens=400, rid="long")):
                started.set()

        reader = asyncio.create_task(long_reader())
        await started.wait()
        short = asyncio.create_task(replica.generate(make_request(max_tokens=3, rid="short")))
        await asyncio.sleep(0.02)
        queued = await replica.stats()
        reader.cancel()  # what Serve does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await reader
        result = await asyncio.wait_for(short, timeout=5)
        return queued, result, await replica.stats()

    queued, result, after = run(scenario)
    assert queued.extra["num_requests_waiting"] == 1
    assert (result.num_tokens, result.finish_reason) == (3, "length")
    assert after.running_requests == 0 and after.extra["kv_cache_usage_perc"] == 0


def test_closing_a_stream_early_aborts_the_request() -> None:
    async def scenario() -> Any:
        replica = make_replica()
        stream = replica.generate_stream(make_request(max_tokens=400))
        await anext(stream)
        await stream.aclose()
        return await replica.stats()

    stats = run(scenario)
    assert stats.running_requests == 0 and stats.extra["kv_cache_usage_perc"] == 0


# ---------------------------------------------------------------------------------------------- errors, health


def test_requests_the_engine_cannot_take_are_invalid() -> None:
    small = SimEngineConfig(kv_capacity_tokens=100, base_step_ms=1)
    replica = make_replica(small, max_model_len=100)
    with pytest.raises(InvalidRequest, match="KV cache"):
        run(lambda: replica.generate(make_request([1] * 90, max_tokens=20)))
    with pytest.raises(InvalidRequest, match="prompt token"):
        run(lambda: make_replica().generate(make_request([], max_tokens=2)))


def test_a_context_longer_than_the_kv_cache_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        make_replica(SimEngineConfig(kv_capacity_tokens=100), max_model_len=200)
    assert make_replica(SimEngineConfig(kv_capacity_tokens=100), max_model_len=None).max_model_len == 100


def test_injected_faults_fail_the_configured_share_of_requests_and_leave_the_engine_healthy() -> None:
    async def outcomes(error_rate: float, count: int = 200) -> list[bool]:
        replica = make_replica(SimEngineConfig(base_step_ms=0, per_seq_step_ms=0, error_rate=error_rate, seed=7))
        failed: list[bool] = []
        for i in range(count):
            try:
                await replica.generate(make_request(max_tokens=1, rid=f"r{i}"))
                failed.append(False)
            except EngineUnavailable as error:
                assert "injected fault" in str(error)
                failed.append(True)
        await replica.check_health()  # an injected fault is one request's, not the engine's
        return failed

    assert not any(run(lambda: outcomes(0.0)))
    assert all(run(lambda: outcomes(1.0, count=5)))
    share = run(lambda: outcomes(0.3))
    assert 0.2 < sum(share) / len(share) < 0.4
    assert share == run(lambda: outcomes(0.3)), "the draws follow the seed"


def test_ping_and_health() -> None:
    replica = make_replica()
    assert run(replica.ping) == "sim-a"
    run(replica.check_health)


def test_a_dead_stepping_task_fails_streams_and_health(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[BaseException | None, Any]:
        replica = make_replica()
        await replica.generate(make_request(max_tokens=2))

        def broken_step() -> None:
            raise RuntimeError("simulated bug")

        monkeypatch.setattr(replica._scheduler, "step", broken_step)
        error: BaseException | None = None
        try:
            await replica.generate(make_request(max_tokens=2))
        except EngineUnavailable as caught:
            error = caught
        with pytest.raises(EngineUnavailable):
            await replica.check_health()
        with pytest.raises(EngineUnavailable):
            await replica.generate(make_request(max_tokens=2))
        return error, await replica.stats()

    error, stats = run(scenario)
    assert error is not None and "simulated bug" in str(error)
    assert not stats.healthy
