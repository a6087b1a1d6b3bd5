"""The ingress: OpenAI-compatible HTTP routes, plus the same calls as Python methods for handle callers.

Routes parse, call the pipeline, and shape the answer; they do no model work. Every error, wherever it was
raised (here, in the router, in preprocess, in an engine replica), becomes an HTTP response in ``error_response``
and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from deployments.canary import StatsWindow
from deployments.postprocess import SSE_DONE, ResponseMeta, StreamFormatter, sse_event
from deployments.preprocess import Preprocessor
from deployments.router import ABRouter
from deployments.types import EngineChunk
from serve_app.admission import EngineLoad
from serve_app.auth import ANONYMOUS, Authenticator, Principal, admin_refusal, exposure_warning
from serve_app.config import ServeFleetConfig
from serve_app.edge import EdgeGuard, EdgeSettings
from serve_app.errors import Conflict, EngineUnavailable, InternalError, InvalidRequest, Overloaded, ServeFleetError
from serve_app.feedback import FeedbackRequest, FeedbackStore
from serve_app.guard import RequestGuard
from serve_app.jsonlog import install_json_logging
from serve_app.limits import timeout_error
from serve_app.metrics import FeedbackMetrics, RequestMetrics, RequestTimer, ShadowMetrics, models_of
from serve_app.paths import logs_dir
from serve_app.pipeline import AnyRequest, CallContext, Pipeline, new_request_id, replica_died, unwrap
from serve_app.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from serve_app.shadowing import Shadower
from serve_app.stages import InProcessPreprocess, PreprocessDeployment, RouterDeployment

logger = logging.getLogger(__name__)

access_log = logging.getLogger("serve_app.access")

VARIANT_HEADER = "x-servefleet-variant"
REQUEST_ID_HEADER = "x-request-id"
LOAD_POLL_S = 0.5  # how stale the engine load behind admission decisions may be
ROLLOUT_REPORT_S = 1.0

RequestT = TypeVar("RequestT", ChatCompletionRequest, CompletionRequest)

app = FastAPI(title="servefleet", summary="OpenAI-compatible LLM serving on Ray Serve and vLLM")
# Authentication and the body-size limit run before FastAPI parses a byte (a 401 must not depend on the body).
app.add_middleware(EdgeGuard)


def as_domain_error(error: BaseException) -> ServeFleetError:
    """Every failure in words a client can act on; anything unexpected is a 500 with no internals leaked."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    error = unwrap(error)
    if isinstance(error, ServeFleetError):
        return error
    if isinstance(error, BackPressureError):
        return Overloaded("the server is at capacity; retry shortly")
    if isinstance(error, RayActorError | DeploymentUnavailableError) or replica_died(error):
        return EngineUnavailable("a replica serving this request failed; the request can be retried")
    logger.error("unexpected error: %r", error, exc_info=error)
    return InternalError("internal error")


def error_response(error: ServeFleetError, headers: Mapping[str, str]) -> JSONResponse:
    out = {**headers, **error.response_headers()}
    return JSONResponse(error.to_response().model_dump(), status_code=error.status_code, headers=out)


def _principal(request: Request) -> Principal:
    return getattr(request.state, "principal", ANONYMOUS)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # pydantic names the union member it tried ("str", "list[...]"); that is noise to a client.
    parts = [p for p in parts if not (p.startswith(("list[", "function-")) or p in {"str", "int", "float", "bool"})]
    return ".".join(parts) or None


# The ingress replica's request metrics, for refusals FastAPI makes before any route (and so any instance)
# runs; one ingress per replica process.
_edge_metrics: RequestMetrics | None = None


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        error = InvalidRequest("the request body is not valid JSON")
    else:
        param = _param_from_loc(tuple(first.get("loc", ())))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        error = InvalidRequest(message, param=param)
    if _edge_metrics is not None:
        timing = RequestTimer(time.monotonic()).finish(time.monotonic(), streamed=False)
        _edge_metrics.observe_finished(None, error.status_code, timing, error_type=error.code or error.error_type)
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
        rollout: Any = None,
    ) -> None:
        """``router`` and ``preprocess`` are deployment handles, or None to route and preprocess in this
        replica (``pools.route_and_prepare: ingress``)."""
        self._config = config
        self._rollout = rollout  # a RolloutDriver handle during a canary: it is told what clients saw
        self._window = StatsWindow()
        install_json_logging(stream=open(logs_dir() / "requests.jsonl", "a", buffering=1), include_text=config.log_text)  # noqa: SIM115 - lives as long as the replica
        self._auth = Authenticator.from_config(config.auth)
        warning = exposure_warning(config.auth, config.server.host)
        if warning:
            logger.warning(warning)
        EdgeGuard.configure(EdgeSettings(auth=self._auth, limits=config.limits))
        self._guard = RequestGuard(self._auth, config.limits, config.admission, [v.name for v in config.variants])
        self._engines = dict(engines)
        # In this replica: the router follows the rollout driver and takes weights from this deployment's
        # user_config (reconfigure below), as the router deployment does.
        self._local_router = (
            ABRouter(config.routing, config.weights, models=models_of(config), rollout=rollout)
            if router is None
            else None
        )
        route_stage = self._local_router or RouterDeployment(router)
        prepare_stage = (
            InProcessPreprocess(Preprocessor(config)) if preprocess is None else PreprocessDeployment(preprocess)
        )
        self._pipeline = Pipeline(
            router=route_stage,
            preprocess=prepare_stage,
            postprocess=postprocess,
            engines=engines,
            guard=self._guard,
            limits=config.limits,
            shadow=None
            if config.shadow is None
            else Shadower(
                config.shadow, preprocess=prepare_stage, engines=engines, metrics=ShadowMetrics(models_of(config))
            ),
        )
        models = models_of(config)
        self._metrics = RequestMetrics(models)
        global _edge_metrics
        _edge_metrics = self._metrics
        self._feedback_metrics = FeedbackMetrics(models)
        self._feedback: FeedbackStore | None = None
        self._poller: asyncio.Task[None] | None = None

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Live routing weights (``{"weights": {...}}``) when this replica routes; the router deployment takes
        the same user_config when it does."""
        if self._local_router is not None:
            self._local_router.reconfigure(user_config)

    # ---- engine load, for admission control ----

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_load())

    async def _poll_load(self) -> None:
        reported = time.monotonic()
        while True:
            loads: dict[str, EngineLoad] = {}
            for name, handle in self._engines.items():
                try:
                    stats = await asyncio.wait_for(handle.stats.remote(), timeout=2)
                except Exception:  # no snapshot: admission admits, which is right while replicas restart
                    continue
                extra = stats.extra
                if "num_requests_waiting" in extra:
                    loads[name] = EngineLoad(
                        waiting_requests=int(extra["num_requests_waiting"]),
                        kv_cache_usage=float(extra.get("kv_cache_usage_perc", 0.0)),
                        running_requests=int(extra.get("num_requests_running", stats.running_requests)),
                    )
            self._guard.update_load(loads)
            if self._rollout is not None and time.monotonic() - reported >= ROLLOUT_REPORT_S:
                snapshot = self._window.snapshot()
                self._window.reset()
                reported = time.monotonic()
                try:
                    await asyncio.wait_for(self._rollout.report.remote(snapshot), timeout=5)
                except Exception as error:  # the step is judged on fewer requests, never on made-up ones
                    logger.warning("rollout report failed: %r", error)
            await asyncio.sleep(LOAD_POLL_S)

    # ---- request accounting: metrics and the access log ----

    def _finished(
        self,
        ctx: CallContext,
        variant: str | None,
        timer: RequestTimer,
        *,
        status: int,
        streamed: bool,
        prompt_tokens: int = 0,
        output_tokens: int | None = None,
        error: ServeFleetError | None = None,
    ) -> None:
        timing = timer.finish(time.monotonic(), streamed=streamed, output_tokens=output_tokens)
        variant = variant or ctx.progress.get("variant")
        error_type = None if error is None else (error.code or error.error_type)
        if self._rollout is not None and variant is not None:
            # Non-streaming answers have no first token: their whole latency stands in, as the client saw it.
            self._window.record(variant, status=status, ttft_s=timing.ttft_s if streamed else timing.e2e_s)
        self._metrics.observe_finished(variant, status, timing, prompt_tokens=prompt_tokens, error_type=error_type)
        access_log.info(
            "request finished",
            extra={
                "request_id": ctx.request_id,
                "variant": variant,
                "status": status,
                "stream": streamed,
                "e2e_s": round(timing.e2e_s, 4),
                "ttft_s": None if timing.ttft_s is None else round(timing.ttft_s, 4),
                "itl_s": None if timing.itl_s is None else round(timing.itl_s, 5),
                "prompt_tokens": prompt_tokens,
                "output_tokens": timing.output_tokens,
                "error_type": error_type,
                "api_key": ctx.principal.name,
            },
        )

    # ---- Python handle API: the same path as HTTP, typed requests in, typed responses out ----

    def _context(self, request_id: str | None, sticky_key: str | None, variant: str | None) -> CallContext:
        return CallContext(request_id=request_id or new_request_id(), sticky_key=sticky_key, override=variant)

    async def _complete(self, request: AnyRequest, ctx: CallContext) -> ChatCompletion | Completion:
        self._ensure_poller()
        timer = RequestTimer(time.monotonic())
        try:
            result = await asyncio.wait_for(
                self._pipeline.complete(request, ctx), timeout=self._config.limits.request_timeout_s
            )
        except TimeoutError:
            error = timeout_error("request", self._config.limits)
            self._finished(ctx, None, timer, status=error.status_code, streamed=False, error=error)
            raise error from None
        except Exception as error:
            # Errors from other replicas arrive wrapped by Ray (RayTaskError subclassing the domain error but
            # with Ray's args); unwrapping recovers the original with its param and code.
            domain = as_domain_error(error)
            self._finished(ctx, None, timer, status=domain.status_code, streamed=False, error=domain)
            raise domain from None
        self._finished(
            ctx,
            result.model,
            timer,
            status=200,
            streamed=False,
            prompt_tokens=result.usage.prompt_tokens,
            output_tokens=result.usage.completion_tokens,
        )
        return result

    async def _stream(self, request: AnyRequest, ctx: CallContext) -> tuple[ResponseMeta, AsyncIterator[EngineChunk]]:
        self._ensure_poller()
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
        timer = RequestTimer(time.monotonic())
        try:
            meta, chunks = await self._stream(request, ctx)
        except ServeFleetError as error:
            self._finished(ctx, None, timer, status=error.status_code, streamed=True, error=error)
            raise
        formatter = _formatter(meta, request)
        async for chunk in self._timed(chunks, meta, ctx, timer):
            yield formatter.chunk(chunk)
        closing = formatter.usage_chunk()
        if closing is not None:
            yield closing

    async def _timed(
        self, chunks: AsyncIterator[EngineChunk], meta: ResponseMeta, ctx: CallContext, timer: RequestTimer
    ) -> AsyncIterator[EngineChunk]:
        """Pass a stream through, timing what the client receives; account for it however it ends."""
        status, error = 499, None  # 499 (nginx's "client closed request") unless it ends otherwise
        self._metrics.request_started(meta.variant)
        try:
            async for chunk in chunks:
                timer.on_chunk(time.monotonic(), chunk.num_tokens, bool(chunk.text))
                yield chunk
            status = 200
        except Exception as exc:
            error = as_domain_error(exc)
            status = error.status_code
            raise error from None
        finally:
            self._metrics.request_ended(meta.variant)
            self._finished(
                ctx, meta.variant, timer, status=status, streamed=True, prompt_tokens=meta.prompt_tokens, error=error
            )

    # ---- HTTP routes ----

    def _http_context(self, request: Request) -> CallContext:
        routing = self._config.routing
        return CallContext(
            request_id=_request_id(request),
            sticky_key=request.headers.get(routing.sticky_header),
            override=request.headers.get(routing.override_header),
            principal=_principal(request),
        )

    async def _respond(self, body: AnyRequest, request: Request) -> Any:
        ctx = self._http_context(request)
        # Serve's proxy already echoes x-request-id on every response (generating one when the client sent
        # none), so only the variant is added here.
        headers: dict[str, str] = {}
        timer = RequestTimer(time.monotonic())
        try:
            if not body.stream:
                result = await self._complete(body, ctx)
                headers[VARIANT_HEADER] = result.model
                return JSONResponse(result.model_dump(), headers=headers)
            meta, chunks = await self._stream(body, ctx)
        except ServeFleetError as error:
            if body.stream:  # _complete has accounted for its own failures
                self._finished(ctx, None, timer, status=error.status_code, streamed=True, error=error)
            if "variant" in ctx.progress:  # a failure after routing names the variant it happened in
                headers[VARIANT_HEADER] = ctx.progress["variant"]
            return error_response(error, headers)
        headers[VARIANT_HEADER] = meta.variant
        return StreamingResponse(
            _sse(meta, body, self._timed(chunks, meta, ctx, timer), ctx.request_id),
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
    async def http_models(self, request: Request) -> ModelList:
        principal = _principal(request)
        variants = [v.name for v in self._config.variants if principal.may_use(v.name)]
        cards = [ModelCard(id=self._config.routing.public_model, variants=variants)] if variants else []
        cards += [ModelCard(id=name, variants=[name]) for name in variants]
        return ModelList(data=cards)

    @app.post("/v1/feedback")
    async def http_feedback(self, body: FeedbackRequest, request: Request) -> JSONResponse:
        """Rate an answer (1 to 5) by its request id; stored durably, aggregated per variant."""
        known = [v.name for v in self._config.variants]
        if body.variant not in known:
            error = InvalidRequest(f"unknown variant {body.variant!r} (known: {', '.join(known)})", param="variant")
            return error_response(error, {})
        try:
            self._auth.authorize_variant(_principal(request), body.variant)
        except ServeFleetError as error:
            return error_response(error, {})
        if self._feedback is None:
            self._feedback = FeedbackStore(self._config.feedback.path)
        first = await asyncio.to_thread(self._feedback.record, body.request_id, body.variant, body.score, body.comment)
        if first:
            self._feedback_metrics.observe_feedback(body.variant, body.score)
        return JSONResponse({"request_id": body.request_id, "recorded": True, "first_rating": first})

    # ---- admin routes: only for clients on this machine, and with auth on only for admin keys ----

    def _admin_refusal(self, request: Request) -> JSONResponse | None:
        refused = admin_refusal(self._auth, _principal(request), request.client.host if request.client else None)
        return None if refused is None else error_response(refused, {})

    @app.get("/admin/status")
    async def http_admin_status(self, request: Request) -> JSONResponse:
        """The app as an operator sees it: variants with weights and engine health, the rollout, feedback."""
        if (refusal := self._admin_refusal(request)) is not None:
            return refusal
        healthy = await self._pipeline.ping_engines()
        weights = self._config.weights
        rollout: dict[str, Any] | None = None
        if self._rollout is not None:
            rollout = await asyncio.wait_for(self._rollout.status.remote(), timeout=10)
            weights = await asyncio.wait_for(self._rollout.weights.remote(), timeout=10)
        if self._feedback is None:
            self._feedback = FeedbackStore(self._config.feedback.path)
        feedback = await asyncio.to_thread(self._feedback.summary)
        variants = [
            {
                "name": v.name,
                "model": v.model,
                "backend": v.backend,
                "weight": weights.get(v.name),
                "healthy": healthy.get(v.name, False),
                "feedback": {"count": feedback[v.name].count, "mean": round(feedback[v.name].mean, 3)}
                if v.name in feedback
                else None,
            }
            for v in self._config.variants
        ]
        shadow = None if self._config.shadow is None else self._config.shadow.model_dump()
        body = {"app": self._config.app_name, "variants": variants, "rollout": rollout, "shadow": shadow}
        return JSONResponse(body)

    @app.post("/admin/rollout/{action}")
    async def http_admin_rollout(self, action: str, request: Request) -> JSONResponse:
        """``promote`` or ``abort`` the canary rollout, as ``servefleet rollout`` does through a handle."""
        if (refusal := self._admin_refusal(request)) is not None:
            return refusal
        if action not in ("promote", "abort"):
            error = InvalidRequest(f"unknown rollout action {action!r}; use promote or abort", param="action")
            return error_response(error, {})
        if self._rollout is None:
            conflict = Conflict(f"this app has no rollout section: nothing to {action}", code="no_rollout")
            return error_response(conflict, {})
        result = await asyncio.wait_for(getattr(self._rollout, action).remote(), timeout=10)
        return JSONResponse(result, status_code=200 if result.get("ok", True) else 409)

    @app.get("/healthz")
    async def http_healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def http_readyz(self) -> JSONResponse:
        engines = await self._pipeline.ping_engines()
        ready = all(engines.values())
        return JSONResponse({"ready": ready, "variants": engines}, status_code=200 if ready else 503)


def _shadower(config: ServeFleetConfig, preprocess: Any, engines: Mapping[str, Any]) -> Shadower | None:
    if config.shadow is None:
        return None
    return Shadower(config.shadow, preprocess=preprocess, engines=engines, metrics=ShadowMetrics(models_of(config)))


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
