"""One request's path through the graph: route, preprocess, generate, postprocess.

The ingress runs this for HTTP callers and for Python handle callers alike, so both get the same routing
and the same response types. It holds deployment handles and no model state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from deployments.postprocess import ResponseMeta, new_meta
from deployments.routing import RouteQuery
from deployments.types import EngineChunk, PreparedRequest, RequestKind
from serve_app.errors import EngineUnavailable
from serve_app.protocol import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest

AnyRequest = ChatCompletionRequest | CompletionRequest


@dataclass(frozen=True, slots=True)
class CallContext:
    """Routing keys and identity of one call, taken from HTTP headers or handle-call keywords."""

    request_id: str
    sticky_key: str | None = None
    override: str | None = None


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
        router: Any,
        preprocess: Any,
        postprocess: Any,
        engines: Mapping[str, Any],
    ) -> None:
        self._router = router
        self._preprocess = preprocess
        self._postprocess = postprocess
        self._engines = dict(engines)
        self._streams = {name: handle.options(stream=True) for name, handle in self._engines.items()}

    @property
    def variants(self) -> list[str]:
        return list(self._engines)

    async def _prepare(self, request: AnyRequest, ctx: CallContext) -> tuple[PreparedRequest, ResponseMeta]:
        query = RouteQuery(model=request.model, sticky_key=ctx.sticky_key or request.user, override=ctx.override)
        decision = await self._router.route.remote(query)
        kind = _kind(request)
        prepare = self._preprocess.prepare_chat if kind == "chat" else self._preprocess.prepare_completion
        prepared: PreparedRequest = await prepare.remote(ctx.request_id, decision.variant, request)
        return prepared, new_meta(_response_id(kind), decision.variant, kind, prepared.prompt_tokens)

    async def complete(self, request: AnyRequest, ctx: CallContext) -> ChatCompletion | Completion:
        prepared, meta = await self._prepare(request, ctx)
        # Passing the engine's response straight into postprocess chains the two hops inside Serve,
        # without a round trip of the generated text through this process.
        result = self._engines[prepared.variant].generate.remote(prepared)
        return await self._postprocess.finalize.remote(meta, result)

    async def stream(self, request: AnyRequest, ctx: CallContext) -> tuple[ResponseMeta, AsyncIterator[EngineChunk]]:
        """Start a stream and wait for its first chunk, so that a request the engine refuses becomes an
        error response rather than a broken stream."""
        prepared, meta = await self._prepare(request, ctx)
        generator = self._streams[prepared.variant].generate_stream.remote(prepared)
        try:
            first = await generator.__anext__()
        except StopAsyncIteration:
            raise EngineUnavailable("the engine closed the stream before producing output") from None
        except BaseException:
            generator.cancel()
            raise
        return meta, _prepend(first, generator)

    async def ping_engines(self) -> dict[str, bool]:
        results = {}
        for name, handle in self._engines.items():
            try:
                await handle.ping.remote()
                results[name] = True
            except Exception:  # readiness is a yes/no question; the reason is in the replica's log
                results[name] = False
        return results


async def _prepend(first: EngineChunk, generator: Any) -> AsyncIterator[EngineChunk]:
    finished = first.finish_reason is not None
    try:
        yield first
        if finished:
            return
        async for chunk in generator:
            yield chunk
        finished = True
    finally:
        if not finished:
            # An error, or the client went away (the consumer was cancelled): cancelling the handle's
            # stream cancels the engine replica's generator, and vLLM aborts the request.
            generator.cancel()
