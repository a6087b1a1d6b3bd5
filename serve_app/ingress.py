"""The ingress: OpenAI-compatible HTTP routes, plus the same calls as Python methods for handle callers.

Routes parse, call the pipeline, and shape the answer; they do no model work. Every error, wherever it was
raised (here, in the router, in preprocess, in an engine replica), becomes an HTTP response in ``error_response``
and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from deployments.postprocess import SSE_DONE, ResponseMeta, StreamFormatter, sse_event
from deployments.types import EngineChunk
from serve_app.config import ServeFleetConfig
from serve_app.errors import EngineUnavailable, InternalError, InvalidRequest, Overloaded, ServeFleetError
from serve_app.pipeline import AnyRequest, CallContext, Pipeline, new_request_id
from serve_app.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)

logger = logging.getLogger(__name__)

VARIANT_HEADER = "x-servefleet-variant"
REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_S = 1

RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)

app = FastAPI(title="servefleet", summary="OpenAI-compatible LLM serving on Ray Serve and vLLM")


def unwrap(error: BaseException) -> BaseException:
    """Ray wraps a remote exception in RayTaskError; the domain error is its cause."""
    from ray.exceptions import RayTaskError

    while isinstance(error, RayTaskError) and error.cause is not None and error.cause is not error:
        error = error.cause
    return error


def as_domain_error(error: BaseException) -> ServeFleetError:
    """Every failure in words a client can act on; anything unexpected is a 500 with no internals leaked."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    error = unwrap(error)
    if isinstance(error, ServeFleetError):
        return error
    if isinstance(error, BackPressureError):
        return Overloaded("the server is at capacity; retry shortly")
    if isinstance(error, RayActorError | DeploymentUnavailableError):
        return EngineUnavailable("a replica serving this request failed; the request can be retried")
    logger.error("unexpected error: %r", error, exc_info=error)
    return InternalError("internal error")


def error_response(error: ServeFleetError, headers: Mapping[str, str]) -> JSONResponse:
    out = dict(headers)
    if error.retryable:
        out["retry-after"] = str(RETRY_AFTER_S)
    return JSONResponse(error.to_response().model_dump(), status_code=error.status_code, headers=out)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # pydantic names the union member it tried ("str", "list[...]"); that is noise to a client.
    parts = [p for p in parts if not (p.startswith(("list[", "function-")) or p in {"str", "int", "float", "bool"})]
    return ".".join(parts) or None


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        error = InvalidRequest("the request body is not valid JSON")
    else:
        param = _param_from_loc(tuple(first.get("loc", ())))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        error = InvalidRequest(message, param=param)
    return error_response(error, {})


def _parse(model: type[RequestT], request: Any) -> RequestT:
    """Validate a handle caller's request with the same rules, and the same 400, as HTTP."""
    try:
        return model.model_validate(request)
    except ValidationError as error:
        first = error.errors()[0]
        param = _param_from_loc(tuple(first["loc"]))
        raise InvalidRequest(f"{param}: {first['msg']}" if param else str(first["msg"]), param=param) from None


def _request_id(request: Request) -> str:
    # Under Serve the proxy has put an x-request-id on every request; the fallback is for other ASGI servers.
    return request.headers.get(REQUEST_ID_HEADER) or new_request_id()


class Ingress:
    """Plain class; the builder wraps it with ``serve.ingress(app)`` and binds it."""

    def __init__(
        self,
        config: ServeFleetConfig,
        router: Any,
        preprocess: Any,
        postprocess: Any,
        engines: Mapping[str, Any],
    ) -> None:
        self._config = config
        self._pipeline = Pipeline(router=router, preprocess=preprocess, postprocess=postprocess, engines=engines)

    # ---- Python handle API: the same path as HTTP, typed requests in, typed responses out ----

    def _context(self, request_id: str | None, sticky_key: str | None, variant: str | None) -> CallContext:
        return CallContext(request_id=request_id or new_request_id(), sticky_key=sticky_key, override=variant)

    async def _complete(self, request: AnyRequest, ctx: CallContext) -> ChatCompletion | Completion:
        try:
            return await self._pipeline.complete(request, ctx)
        except Exception as error:
            # Errors from other replicas arrive wrapped by Ray (RayTaskError subclassing the domain error but
            # with Ray's args); unwrapping recovers the original with its param and code.
            raise as_domain_error(error) from None

    async def _stream(self, request: AnyRequest, ctx: CallContext) -> tuple[ResponseMeta, AsyncIterator[EngineChunk]]:
        try:
            return await self._pipeline.stream(request, ctx)
        except Exception as error:
            raise as_domain_error(error) from None

    async def chat_completion(
        self,
        request: ChatCompletionRequest | Mapping[str, Any],
        *,
        sticky_key: str | None = None,
        variant: str | None = None,
        request_id: str | None = None,
    ) -> ChatCompletion:
        parsed = _parse(ChatCompletionRequest, request)
        result = await self._complete(parsed, self._context(request_id, sticky_key, variant))
        assert isinstance(result, ChatCompletion)
        return result

    async def completion(
        self,
        request: CompletionRequest | Mapping[str, Any],
        *,
        sticky_key: str | None = None,
        variant: str | None = None,
        request_id: str | None = None,
    ) -> Completion:
        parsed = _parse(CompletionRequest, request)
        result = await self._complete(parsed, self._context(request_id, sticky_key, variant))
        assert isinstance(result, Completion)
        return result

    async def chat_completion_stream(
        self,
        request: ChatCompletionRequest | Mapping[str, Any],
        *,
        sticky_key: str | None = None,
        variant: str | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[ChatCompletionChunk]:
        parsed = _parse(ChatCompletionRequest, request)
        async for payload in self._payloads(parsed, self._context(request_id, sticky_key, variant)):
            yield ChatCompletionChunk.model_validate(payload)

    async def completion_stream(
        self,
        request: CompletionRequest | Mapping[str, Any],
        *,
        sticky_key: str | None = None,
        variant: str | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[Completion]:
        parsed = _parse(CompletionRequest, request)
        async for payload in self._payloads(parsed, self._context(request_id, sticky_key, variant)):
            yield Completion.model_validate(payload)

    async def _payloads(self, request: AnyRequest, ctx: CallContext) -> AsyncIterator[dict[str, object]]:
        meta, chunks = await self._stream(request, ctx)
        formatter = _formatter(meta, request)
        async for chunk in chunks:
            yield formatter.chunk(chunk)
        closing = formatter.usage_chunk()
        if closing is not None:
            yield closing

    # ---- HTTP routes ----

    def _http_context(self, request: Request) -> CallContext:
        routing = self._config.routing
        return CallContext(
            request_id=_request_id(request),
            sticky_key=request.headers.get(routing.sticky_header),
            override=request.headers.get(routing.override_header),
        )

    async def _respond(self, body: AnyRequest, request: Request) -> Any:
        ctx = self._http_context(request)
        # Serve's proxy already echoes x-request-id on every response (generating one when the client sent
        # none), so only the variant is added here.
        headers: dict[str, str] = {}
        try:
            if not body.stream:
                result = await self._complete(body, ctx)
                headers[VARIANT_HEADER] = result.model
                return JSONResponse(result.model_dump(), headers=headers)
            meta, chunks = await self._stream(body, ctx)
        except ServeFleetError as error:
            return error_response(error, headers)
        headers[VARIANT_HEADER] = meta.variant
        return StreamingResponse(
            _sse(meta, body, chunks, ctx.request_id),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

    @app.post("/v1/chat/completions")
    async def http_chat_completions(self, body: ChatCompletionRequest, request: Request) -> Any:
        return await self._respond(body, request)

    @app.post("/v1/completions")
    async def http_completions(self, body: CompletionRequest, request: Request) -> Any:
        return await self._respond(body, request)

    @app.get("/v1/models")
    async def http_models(self) -> ModelList:
        variants = [v.name for v in self._config.variants]
        cards = [ModelCard(id=self._config.routing.public_model, variants=variants)]
        cards += [ModelCard(id=name, variants=[name]) for name in variants]
        return ModelList(data=cards)

    @app.get("/healthz")
    async def http_healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def http_readyz(self) -> JSONResponse:
        engines = await self._pipeline.ping_engines()
        ready = all(engines.values())
        return JSONResponse({"ready": ready, "variants": engines}, status_code=200 if ready else 503)


def _formatter(meta: ResponseMeta, request: AnyRequest) -> StreamFormatter:
    options = request.stream_options
    return StreamFormatter(meta, include_usage=bool(options and options.include_usage))


async def _sse(
    meta: ResponseMeta, request: AnyRequest, chunks: AsyncIterator[EngineChunk], request_id: str
) -> AsyncIterator[str]:
    """The SSE body. An error after the first byte can no longer change the status code, so it is sent as an
    OpenAI-style error event before the stream ends, and logged."""
    formatter = _formatter(meta, request)
    try:
        async for chunk in chunks:
            yield sse_event(formatter.chunk(chunk))
        closing = formatter.usage_chunk()
        if closing is not None:
            yield sse_event(closing)
    except Exception as error:
        domain = as_domain_error(error)
        logger.warning("stream %s failed mid-way: %s", request_id, domain.message)
        yield sse_event(domain.to_response().model_dump())
    yield SSE_DONE
