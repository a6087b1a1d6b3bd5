"""One request's path through the graph: route, preprocess, generate, postprocess.

The ingress runs this for HTTP callers and for Python handle callers alike, so both get the same routing
and the same response types. It holds the router and preprocess stages (in process or behind handles,
``serve_app.stages``), deployment handles for the rest, and no model state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from deployments.postprocess import ResponseMeta, new_meta
from deployments.routing import RouteQuery
from deployments.shadow import AnswerSummary
from deployments.types import EngineChunk, PreparedRequest, RequestKind
from serve_app.auth import ANONYMOUS, Principal
from serve_app.errors import EngineDead, EngineUnavailable
from serve_app.guard import RequestGuard, Ticket
from serve_app.limits import LimitsConfig, check_request, timeout_error
from serve_app.protocol import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from serve_app.shadowing import Shadower
from serve_app.stages import PrepareStage, RouterStage

logger = logging.getLogger(__name__)

AnyRequest = ChatCompletionRequest | CompletionRequest


@dataclass(frozen=True, slots=True)
class CallContext:
    """Routing keys and identity of one call, taken from HTTP headers or handle-call keywords."""

    request_id: str
    sticky_key: str | None = None
    override: str | None = None
    principal: Principal = ANONYMOUS
    # Filled in as the call proceeds (the variant once routed), so that a failure later on can be
    # attributed to the variant it happened in.
    progress: dict[str, str] = field(default_factory=dict)


def unwrap(error: BaseException) -> BaseException:
    """Ray wraps a remote exception in RayTaskError; the domain error is its cause."""
    from ray.exceptions import RayTaskError

    while isinstance(error, RayTaskError) and error.cause is not None and error.cause is not error:
        error = error.cause
    return error


def replica_died(error: BaseException) -> bool:
    """Whether ``error`` (possibly wrapped by Ray on its way through other replicas) is a replica's death."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import RayServeException

    error = unwrap(error)
    if isinstance(error, ActorDiedError | ActorUnavailableError | RayActorError):
        return True
    # A replica whose input came from a dead replica (the engine's result chained into postprocess) fails
    # with Serve's own exception; only its message says why.
    return isinstance(error, RayServeException) and "upstream actor died" in str(error)


def retry_safe(error: BaseException) -> bool:
    """Whether a non-streaming call that failed with ``error`` may be sent again: its replica died, or the engine
    inside it did. Either way no answer reached the client, and the retry goes to a live replica."""
    return replica_died(error) or isinstance(unwrap(error), EngineDead)


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def _kind(request: AnyRequest) -> RequestKind:
    return "chat" if isinstance(request, ChatCompletionRequest) else "completion"


def _response_id(kind: RequestKind) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


class Pipeline:
    def __init__(
        self,
        *,
        router: RouterStage,
        preprocess: PrepareStage,
        postprocess: Any,
        engines: Mapping[str, Any],
        guard: RequestGuard | None = None,
        limits: LimitsConfig | None = None,
        shadow: Shadower | None = None,
    ) -> None:
        self._router = router
        self._preprocess = preprocess
        self._postprocess = postprocess
        self._engines = dict(engines)
        self._streams = {name: handle.options(stream=True) for name, handle in self._engines.items()}
        self._guard = guard
        self._limits = limits or LimitsConfig()
        self._shadow = shadow

    @property
    def variants(self) -> list[str]:
        return list(self._engines)

    async def _prepare(self, request: AnyRequest, ctx: CallContext) -> tuple[PreparedRequest, ResponseMeta]:
        # Field limits first: a request that breaks one costs no hop at all.
        if (violation := check_request(request, self._limits)) is not None:
            raise violation.error()
        query = RouteQuery(model=request.model, sticky_key=ctx.sticky_key or request.user, override=ctx.override)
        decision = await self._router.route(query)
        ctx.progress["variant"] = decision.variant
        kind = _kind(request)
        prepared = await self._preprocess.prepare(kind, ctx.request_id, decision.variant, request)
        return prepared, new_meta(_response_id(kind), decision.variant, kind, prepared.prompt_tokens)

    def _admit(self, prepared: PreparedRequest, ctx: CallContext) -> Ticket | None:
        return None if self._guard is None else self._guard.admit(ctx.principal, prepared)

    def _release(self, ticket: Ticket | None, output_tokens: int) -> None:
        if ticket is not None and self._guard is not None:
            self._guard.release(ticket, output_tokens)

    async def complete(self, request: AnyRequest, ctx: CallContext) -> ChatCompletion | Completion:
        prepared, meta = await self._prepare(request, ctx)
        ticket = self._admit(prepared, ctx)
        used = prepared.sampling.max_tokens  # charged in full unless the answer says otherwise
        try:
            started = time.monotonic()
            # Passing the engine's response straight into postprocess chains the two hops inside Serve,
            # without a round trip of the generated text through this process.
            try:
                result = self._engines[prepared.variant].generate.remote(prepared)
                answer = await self._postprocess.finalize.remote(meta, result)
            except Exception as error:
                if not retry_safe(error):
                    raise
                # The client has seen nothing of a non-streaming answer, so it is retried once, and Serve's
                # router sends the retry to a live replica. A second death is the client's to retry.
                logger.warning("engine replica or engine died under %s; retrying once", ctx.request_id)
                result = self._engines[prepared.variant].generate.remote(prepared)
                answer = await self._postprocess.finalize.remote(meta, result)
            used = answer.usage.completion_tokens
        finally:
            self._release(ticket, used)
        choice = answer.choices[0]
        text = choice.message.content if isinstance(answer, ChatCompletion) else choice.text
        self._maybe_shadow(request, ctx, prepared, text or "", used, time.monotonic() - started, choice.finish_reason)
        return answer

    def _maybe_shadow(
        self,
        request: AnyRequest,
        ctx: CallContext,
        prepared: PreparedRequest,
        text: str,
        tokens: int,
        latency_s: float,
        finish: str | None,
    ) -> None:
        if self._shadow is None:
            return
        target = self._shadow.target(ctx.request_id, prepared.variant, request)
        if target is not None:
            self._shadow.submit(request, prepared, AnswerSummary(text, tokens, latency_s, finish), target)

    async def stream(self, request: AnyRequest, ctx: CallContext) -> tuple[ResponseMeta, AsyncIterator[EngineChunk]]:
        """Start a stream and wait for its first chunk, so that a request the engine refuses becomes an
        error response rather than a broken stream."""
        prepared, meta = await self._prepare(request, ctx)
        ticket = self._admit(prepared, ctx)
        idle_s = self._limits.stream_idle_timeout_s
        generator = self._streams[prepared.variant].generate_stream.remote(prepared)
        try:
            try:
                first = await _next_chunk(generator, idle_s, self._limits)
            except Exception as error:
                if not retry_safe(error):
                    raise
                # Before its first chunk a stream has sent the client nothing, so, like a non-streaming call,
                # it is retried once, on a live replica.
                logger.warning("engine replica or engine died before %s streamed; retrying once", ctx.request_id)
                generator.cancel()
                generator = self._streams[prepared.variant].generate_stream.remote(prepared)
                first = await _next_chunk(generator, idle_s, self._limits)
        except StopAsyncIteration:
            self._release(ticket, 0)
            raise EngineUnavailable("the engine closed the stream before producing output") from None
        except BaseException:
            generator.cancel()
            self._release(ticket, 0)
            raise
        started = time.monotonic()

        def done(text: str, used: int, finish: str | None) -> None:
            self._maybe_shadow(request, ctx, prepared, text, used, time.monotonic() - started, finish)

        return meta, _prepend(first, generator, idle_s, self._limits, lambda used: self._release(ticket, used), done)

    async def ping_engines(self) -> dict[str, bool]:
        results = {}
        for name, handle in self._engines.items():
            try:
                await handle.ping.remote()
                results[name] = True
            except Exception:  # readiness is a yes/no question; the reason is in the replica's log
                results[name] = False
        return results


async def _next_chunk(generator: Any, idle_s: float, limits: LimitsConfig) -> EngineChunk:
    # asyncio.timeout, not wait_for: this runs for every chunk, and wait_for wraps the await in a new Task.
    try:
        async with asyncio.timeout(idle_s):
            return await generator.__anext__()
    except TimeoutError:
        raise timeout_error("stream_idle", limits) from None


async def _prepend(
    first: EngineChunk, generator: Any, idle_s: float, limits: LimitsConfig, release: Any, done: Any
) -> AsyncIterator[EngineChunk]:
    finished = first.finish_reason is not None
    used = first.num_tokens
    texts, finish = [first.text], first.finish_reason
    try:
        yield first
        while not finished:
            try:
                chunk = await _next_chunk(generator, idle_s, limits)
            except StopAsyncIteration:
                break
            used += chunk.num_tokens
            texts.append(chunk.text)
            finish = chunk.finish_reason
            finished = finish is not None
            yield chunk
        finished = True
        done("".join(texts), used, finish)
    finally:
        release(used)
        if not finished:
            # An error, a stream gone idle, or the client went away (the consumer was cancelled): cancelling
            # the handle's stream cancels the engine replica's generator, and vLLM aborts the request.
            generator.cancel()
