"""A SIMULATED engine replica, for tests and capacity planning: never the default, never a real model.

``SimEngineReplica`` has exactly the async interface of ``deployments.engine.EngineReplica``, so the builder
can put it in a variant's pool in place of vLLM (``backend: sim``). It drives the pure continuous-batching
model of ``deployments.sim_model`` in real time: one asyncio task runs the scheduler's steps, sleeping each
step's simulated duration, and hands every token to the stream it belongs to. Latency and throughput under
load therefore follow the calibrated model, while the replica itself costs almost no CPU, so many of them fit
on a small machine.

The text is deterministic nonsense: words from a fixed vocabulary picked by an RNG keyed on the prompt's
tokens and the request's seed (the same request always gets the same words, whatever shares its batch).
Stop strings are honoured the way vLLM honours them: the output ends before the stop string, which is never
sent, and text that might be the start of one is held back until it is known not to be.

It imports neither vLLM nor torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence

from deployments.coalesce import coalesce_window_s, coalesced_chunks, collected
from deployments.sim_model import SimEngineConfig, SimScheduler, StepResult
from deployments.types import EngineChunk, EngineResult, EngineStats, PreparedRequest
from serve_app.config import StreamConfig, VariantConfig
from serve_app.errors import EngineUnavailable, InvalidRequest
from serve_app.metrics import EngineLoadMetrics, replica_label

__all__ = ["WORDS", "SimEngineReplica", "StopScanner", "prompt_key", "token_text"]

logger = logging.getLogger(__name__)

# The simulated vocabulary: one word per token, all lower case ASCII so that stop strings are easy to write.
WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "amber", "basalt", "cedar", "dune", "ember", "fjord",
    "granite", "harbor", "island", "jasper", "kelp", "lagoon", "meadow", "nectar",
    "orchid", "pebble", "quartz", "river", "summit", "tundra", "umber", "valley",
    "willow", "yarrow", "zephyr", "anchor", "beacon", "canyon", "delta-wing", "estuary",
    "falcon", "glacier", "heron", "iris", "juniper", "kestrel", "larch", "marsh",
)  # fmt: skip

# Timer overshoot of one step is made up in the next, so the simulated token rate holds on a busy machine;
# a longer stall (the event loop blocked) is not, or the engine would burst many steps with no pause at all.
_MAX_CATCH_UP_S = 0.02


class _EngineFailed:
    """Queued to every open stream when the stepping task dies."""


_FAILED = _EngineFailed()


def token_text(token_id: int, index: int) -> str:
    """The text of the ``index``-th generated token: a word, space-separated from the one before."""
    word = WORDS[token_id % len(WORDS)]
    return word if index == 0 else f" {word}"


def prompt_key(token_ids: Sequence[int], seed: int | None) -> int:
    """A stable 64-bit key for a prompt and a sampling seed: the simulated output is a function of it."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(",".join(map(str, token_ids)).encode())
    digest.update(f"|{seed}".encode())
    return int.from_bytes(digest.digest(), "big")


class StopScanner:
    """Cuts streamed text at the first stop string, never releasing text that could begin one.

    ``feed`` returns what may be sent now and whether a stop string was found (the text before it is
    returned; the stop string and anything after it are dropped). Only a tail that is the start of some stop
    string is held back, so text without a near-match streams at once. ``flush`` returns what was held back,
    for a sequence that ends for another reason.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        self._buffer += text
        hits = [at for at in (self._buffer.find(stop) for stop in self._stops) if at >= 0]
        if hits:
            released, self._buffer = self._buffer[: min(hits)], ""
            return released, True
        cut = len(self._buffer) - self._held_tail()
        released, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return released, False

    def flush(self) -> str:
        released, self._buffer = self._buffer, ""
        return released

    def _held_tail(self) -> int:
        """Length of the longest end of the buffer that some stop string starts with."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._buffer)), longest, -1):
                if self._buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class SimEngineReplica:
    """A simulated engine with ``EngineReplica``'s interface. Plain class: the builder makes it a deployment.

    ``sim`` carries the model's costs and limits (the variant's ``sim`` section once the config has one); the
    default is the rough CPU fit of ``SimEngineConfig``. All state lives on one event loop: the one that first
    calls ``generate_stream`` or ``generate`` starts the stepping task.
    """

    def __init__(self, variant: VariantConfig, stream: StreamConfig, sim: SimEngineConfig | None = None) -> None:
        self.variant = variant.name
        self._stream = stream
        self.config = sim if sim is not None else SimEngineConfig()
        self.max_model_len = variant.engine.max_model_len or self.config.kv_capacity_tokens
        if self.max_model_len > self.config.kv_capacity_tokens:
            # vLLM refuses to start when one sequence of the full context length cannot fit its KV cache.
            raise ValueError(
                f"variant {variant.name}: max_model_len {self.max_model_len} exceeds the simulated KV cache "
                f"({self.config.kv_capacity_tokens} tokens)"
            )
        self._scheduler = SimScheduler(self.config)
        self._queues: dict[str, asyncio.Queue[tuple[int, str | None] | _EngineFailed]] = {}
        self._ids = itertools.count()
        self._active_streams = 0
        self._wake: asyncio.Event | None = None
        self._stepper: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._faults = random.Random(self.config.seed)
        self.steps = 0  # steps run so far: how many batches the requests were served in
        EngineLoadMetrics({variant.name: variant.model}).track(variant.name, replica_label(), self._signals)
        logger.info("SIMULATED engine for %s: %s", self.variant, self.config.model_dump())

    # ------------------------------------------------------------------------------------------ stepping

    def _start(self) -> asyncio.Event:
        if self._failure is not None:
            raise EngineUnavailable(f"simulated engine for {self.variant} died: {self._failure!r}")
        loop = asyncio.get_running_loop()
        # A stepping task on another (finished) loop can never run again: start one on this loop.
        if self._stepper is None or self._wake is None or self._stepper.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._stepper = loop.create_task(self._run(self._wake), name=f"sim-engine-{self.variant}")
        return self._wake

    async def _run(self, wake: asyncio.Event) -> None:
        try:
            step_end = time.monotonic()
            while True:
                result = self._scheduler.step()
                if result is None:
                    wake.clear()
                    await wake.wait()
                    step_end = time.monotonic()
                    continue
                step_end = max(step_end, time.monotonic() - _MAX_CATCH_UP_S) + result.duration_ms / 1000
                await asyncio.sleep(max(step_end - time.monotonic(), 0))
                self.steps += 1
                self._deliver(result)
        except Exception as error:
            logger.exception("simulated engine for %s failed", self.variant)
            self._failure = error
            for queue in self._queues.values():
                queue.put_nowait(_FAILED)

    def _deliver(self, result: StepResult) -> None:
        for event in result.tokens:
            queue = self._queues.get(event.request_id)
            # A stream that went away meanwhile has already aborted its request; its last token is dropped.
            if queue is not None:
                queue.put_nowait((event.token_id, event.finish_reason))

    # ------------------------------------------------------------------------------------------ requests

    async def _outputs(self, request: PreparedRequest) -> AsyncIterator[tuple[str, int, str | None]]:
        """(new text, new tokens, finish reason) as the stepping task produces tokens for ``request``.

        However it ends (finished, stopped, cancelled, closed early), the request leaves the scheduler, so its
        batch slot and KV are free for the next step.
        """
        wake = self._start()
        if self.config.error_rate and self._faults.random() < self.config.error_rate:
            raise EngineUnavailable(f"simulated engine for {self.variant}: injected fault (sim.error_rate)")
        sampling = request.sampling
        engine_request_id = f"{request.request_id}-{next(self._ids)}"
        queue: asyncio.Queue[tuple[int, str | None] | _EngineFailed] = asyncio.Queue()
        try:
            self._scheduler.submit(
                engine_request_id,
                prompt_len=len(request.prompt_token_ids),
                max_tokens=sampling.max_tokens,
                key=prompt_key(request.prompt_token_ids, sampling.seed),
            )
        except ValueError as error:
            raise InvalidRequest(str(error)) from None
        self._queues[engine_request_id] = queue
        wake.set()
        scanner = StopScanner(sampling.stop)
        index = 0
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                texts: list[str] = []
                tokens = 0
                finish: str | None = None
                for item in items:
                    if isinstance(item, _EngineFailed):
                        raise EngineUnavailable(f"simulated engine for {self.variant} died: {self._failure!r}")
                    token_id, reason = item
                    tokens += 1
                    released, stopped = scanner.feed(token_text(token_id, index))
                    index += 1
                    texts.append(released)
                    if stopped:
                        finish = "stop"
                        break
                    if reason is not None:
                        texts.append(scanner.flush())
                        finish = reason
                        break
                yield "".join(texts), tokens, finish
                if finish is not None:
                    return
        finally:
            self._queues.pop(engine_request_id, None)
            # A no-op for a request the scheduler already finished; frees the slot of any other.
            self._scheduler.abort(engine_request_id)

    async def generate_stream(self, request: PreparedRequest) -> AsyncIterator[EngineChunk]:
        """Stream coalesced chunks exactly as ``EngineReplica.generate_stream`` does: the first visible text
        at once, later tokens within the per-stream coalescing window together. Closing or cancelling this
        generator aborts the simulated request."""
        per_stream_ms, max_ms = self._stream.coalesce_per_stream_ms, self._stream.coalesce_ms
        self._active_streams += 1
        try:
            chunks = coalesced_chunks(
                self._outputs(request), lambda: coalesce_window_s(self._active_streams, per_stream_ms, max_ms)
            )
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        finally:
            self._active_streams -= 1

    async def generate(self, request: PreparedRequest) -> EngineResult:
        """Run a request to completion and return the whole output."""
        return await collected(self._outputs(request))

    # ------------------------------------------------------------------------------------------ health

    def _signals(self) -> dict[str, float]:
        signals = self._scheduler.signals()
        return {
            "num_requests_running": float(signals.num_running),
            "num_requests_waiting": float(signals.num_waiting),
            "kv_cache_usage_perc": signals.kv_usage,
            "simulated": 1.0,
        }

    async def stats(self) -> EngineStats:
        extra = self._signals()
        return EngineStats(
            variant=self.variant,
            running_requests=int(extra["num_requests_running"] + extra["num_requests_waiting"]),
            healthy=self._failure is None,
            extra=extra,
        )

    async def ping(self) -> str:
        return self.variant

    async def check_health(self) -> None:
        """Serve calls this periodically; a dead stepping task marks the replica unhealthy."""
        if self._failure is not None:
            raise EngineUnavailable(f"simulated engine for {self.variant} died: {self._failure!r}")
