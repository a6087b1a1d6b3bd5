"""The engine replica: one vLLM ``AsyncLLM`` per replica, streaming coalesced chunks.

This is the only module in the project that imports vLLM (and, through it, torch); the imports live inside
methods so that importing this module stays cheap for the builder, the CLI and unit tests.

vLLM batches continuously on its own, so there is no ``@serve.batch`` here: concurrent ``generate`` calls on
one replica simply become concurrent sequences in the engine's batch, and the replica's
``max_ongoing_requests`` is sized to the engine's ``max_num_seqs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from deployments.coalesce import coalesce_window_s, coalesced_chunks, collected
from deployments.types import EngineChunk, EngineResult, EngineStats, PreparedRequest, SamplingSpec
from serve_app.config import StreamConfig, VariantConfig
from serve_app.errors import EngineDead, InvalidRequest
from serve_app.metrics import EngineLoadMetrics, replica_label
from serve_app.model_source import resolve_model

if TYPE_CHECKING:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# How long a replica whose engine died lives on. Not at all: while it lives, it fails every request at once,
# which makes it look like the least loaded replica to Serve's router, so it would draw traffic to itself.
EXIT_DELAY_S = 0.0


def engine_kwargs(variant: VariantConfig, model_path: str, tokenizer_path: str) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` for a variant: typed fields first, then the pass-through extras."""
    args = variant.engine
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tokenizer": tokenizer_path,
        "served_model_name": variant.name,
        "max_num_seqs": args.max_num_seqs,
        "dtype": args.dtype,
        "enforce_eager": args.enforce_eager,
        "seed": args.seed,
    }
    if args.max_model_len is not None:
        kwargs["max_model_len"] = args.max_model_len
    if args.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    kwargs.update(args.extra)
    return kwargs


def sampling_params(spec: SamplingSpec) -> SamplingParams:
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        stop=list(spec.stop) or None,
        seed=spec.seed,
        presence_penalty=spec.presence_penalty,
        frequency_penalty=spec.frequency_penalty,
        # Deltas, not the whole text so far: each chunk then costs the same to ship whatever its position.
        output_kind=RequestOutputKind.DELTA,
    )


def stat_loggers(load: dict[str, float]) -> list[Any]:
    """vLLM's own metrics through Ray's metrics agent (``ray_vllm_*``, beside the app's), plus a probe that
    keeps the scheduler's last load report in ``load`` for admission control and autoscaling."""
    from vllm.v1.metrics.loggers import StatLoggerBase
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    class LoadProbe(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            if scheduler_stats is not None:
                load["num_requests_waiting"] = float(scheduler_stats.num_waiting_reqs)
                load["num_requests_running"] = float(scheduler_stats.num_running_reqs)
                load["kv_cache_usage_perc"] = float(scheduler_stats.kv_cache_usage)

        def log_engine_initialized(self) -> None:
            pass

    return [RayPrometheusStatLogger, LoadProbe]


class EngineReplica:
    """Owns one vLLM engine. Plain class: the builder turns it into a Serve deployment."""

    def __init__(self, variant: VariantConfig, stream: StreamConfig) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.variant = variant.name
        self._stream = stream
        self._active_streams = 0
        source = resolve_model(variant, build=True)
        started = time.monotonic()
        args = AsyncEngineArgs(**engine_kwargs(variant, source.model, source.tokenizer))
        self._load: dict[str, float] = {}
        self._exit_scheduled = False
        from deployments.cpu_affinity import born_on, pin_children

        with born_on(variant.engine.cpu_affinity):
            self._engine: AsyncLLM = AsyncLLM.from_engine_args(args, stat_loggers=stat_loggers(self._load))
        self.max_model_len = self._engine.model_config.max_model_len
        if variant.engine.cpu_affinity is not None:
            pin_children(variant.engine.cpu_affinity)  # and every thread they have started since
        EngineLoadMetrics({variant.name: variant.model}).track(variant.name, replica_label(), self._signals)
        logger.info("engine for %s ready in %.1fs", self.variant, time.monotonic() - started)

    async def _outputs(self, request: PreparedRequest) -> AsyncIterator[tuple[str, int, str | None]]:
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        engine_request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        prompt = TokensPrompt(prompt_token_ids=request.prompt_token_ids)
        try:
            async for output in self._engine.generate(prompt, sampling_params(request.sampling), engine_request_id):
                completion = output.outputs[0]
                finish = completion.finish_reason if output.finished else None
                yield completion.text, len(completion.token_ids), finish
        except EngineDeadError as error:
            self._engine_died()
            raise EngineDead(f"engine for {self.variant} died: {error}") from None
        except ValueError as error:
            # vLLM's own input checks (e.g. a prompt that our preprocess let through but the engine's
            # tokenizer limits refuse) are the caller's fault, not ours.
            raise InvalidRequest(str(error)) from None

    async def generate_stream(self, request: PreparedRequest) -> AsyncIterator[EngineChunk]:
        """Stream coalesced chunks. The first visible text goes out at once (time to first token); later
        tokens that arrive within the coalescing window travel together, which cuts per-message overhead on
        every hop between here and the client. The window widens with the number of streams this replica
        serves (``deployments.coalesce``).

        If the caller goes away, Serve cancels this generator; vLLM's ``generate`` aborts the engine request
        on cancellation, freeing its batch slot and KV cache.
        """
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

    def _signals(self) -> dict[str, float]:
        # The scheduler's last report goes stale when the engine falls idle; idle means nothing waits or runs,
        # and no request holds KV blocks.
        if not self._engine.get_num_unfinished_requests():
            return {"num_requests_waiting": 0.0, "num_requests_running": 0.0, "kv_cache_usage_perc": 0.0}
        return {"kv_cache_usage_perc": 0.0, **self._load}

    async def stats(self) -> EngineStats:
        return EngineStats(
            variant=self.variant,
            running_requests=self._engine.get_num_unfinished_requests(),
            healthy=not self._engine.errored,
            extra=self._signals(),
        )

    async def ping(self) -> str:
        return self.variant

    def _engine_died(self) -> None:
        """A dead vLLM engine never comes back inside this process, so the replica ends itself: Serve sees the
        actor die at once and starts a new one, where its health check would take several periods to give up,
        sending new requests here all the while. Callers see the replica die and the ingress retries what
        had not yet produced output on another replica."""
        if self._exit_scheduled:
            return
        self._exit_scheduled = True
        logger.error("engine for %s died; the replica exits to be replaced", self.variant)
        asyncio.get_running_loop().call_later(EXIT_DELAY_S, os._exit, 1)

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and Serve replaces it."""
        if self._engine.errored:
            self._engine_died()
        await asyncio.wait_for(self._engine.check_health(), timeout=10)

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
