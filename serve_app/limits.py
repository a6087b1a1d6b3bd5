"""Request size and time limits: what one client may ask of the server in a single request.

The protocol types say what a well-formed request is; these say how big a well-formed request may be. The checks
are pure and return the first violation, naming the field and the limit, so the ingress can answer 413 for the
body and 400 for the rest without re-deriving why. Timeouts are enforced by the ingress (only it holds the clock
and the connection); this module holds their settings and the error they become.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import InvalidRequest, ServeFleetError
from serve_app.protocol import ChatCompletionRequest, SamplingFields

__all__ = [
    "LimitExceeded",
    "LimitViolation",
    "LimitsConfig",
    "PayloadTooLarge",
    "RequestTimedOut",
    "check_body_size",
    "check_request",
    "timeout_error",
]

MIB = 1024 * 1024


class LimitsConfig(BaseModel):
    """Per-request limits. The defaults suit an API open to untrusted clients and are far above what the
    built-in models can use, so they never bite in local runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(
        default=MIB,
        gt=0,
        description="Largest request body accepted (1 MiB). Checked before the body is parsed; larger is a 413.",
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Most prompt tokens after templating; None leaves the variant's context length as the bound.",
    )
    max_tokens: int | None = Field(
        default=4096,
        gt=0,
        description="Most tokens a request may ask to generate (max_tokens / max_completion_tokens); None: no cap.",
    )
    max_n: int = Field(default=1, ge=1, description="Most choices per request (the engine path serves one).")
    request_timeout_s: float = Field(
        default=300,
        gt=0,
        description="Whole-request deadline in the ingress; past it a non-streaming request is a 408.",
    )
    stream_idle_timeout_s: float = Field(
        default=60,
        gt=0,
        description=(
            "Longest wait for the next chunk of a stream. Past it the stream ends with an error event (the status "
            "code is already sent) and the engine request is aborted."
        ),
    )


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "request_too_large"


class LimitExceeded(InvalidRequest):
    default_code = "limit_exceeded"


class RequestTimedOut(ServeFleetError):
    # 408, as Ray Serve's own request_timeout_s answers; OpenAI's client retries 408 on its own.
    status_code = 408
    error_type = "timeout_error"
    default_code = "request_timeout"


@dataclass(frozen=True, slots=True)
class LimitViolation:
    """Which limit a request broke: ``field`` is the request field (or ``body``), ``actual`` what it asked."""

    field: str
    limit: int
    actual: int

    @property
    def status_code(self) -> int:
        return 413 if self.field == "body" else 400

    @property
    def message(self) -> str:
        if self.field == "body":
            return f"the request body is {self.actual} bytes; the limit is {self.limit}"
        if self.field in ("messages", "prompt"):
            return f"the prompt is {self.actual} tokens; this server accepts at most {self.limit}"
        return f"{self.field} is {self.actual}; this server accepts at most {self.limit}"

    def error(self) -> InvalidRequest:
        if self.field == "body":
            return PayloadTooLarge(self.message)
        return LimitExceeded(self.message, param=self.field)


def check_body_size(size_bytes: int, limits: LimitsConfig) -> LimitViolation | None:
    """Check a body's size: the Content-Length header before reading, then the bytes actually read (a chunked
    body has no Content-Length, and a client may lie in it)."""
    if size_bytes > limits.max_body_bytes:
        return LimitViolation(field="body", limit=limits.max_body_bytes, actual=size_bytes)
    return None


def check_request(
    request: SamplingFields, limits: LimitsConfig, *, prompt_tokens: int | None = None
) -> LimitViolation | None:
    """The first limit a parsed request breaks, or None. ``prompt_tokens`` (known after preprocess) adds the
    prompt check; without it only the fields are checked, which the ingress can do before any hop."""
    if request.n > limits.max_n:
        return LimitViolation(field="n", limit=limits.max_n, actual=request.n)
    asked = _asked_max_tokens(request)
    if limits.max_tokens is not None and asked is not None and asked[1] > limits.max_tokens:
        return LimitViolation(field=asked[0], limit=limits.max_tokens, actual=asked[1])
    if limits.max_prompt_tokens is not None and prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
        field = "messages" if isinstance(request, ChatCompletionRequest) else "prompt"
        return LimitViolation(field=field, limit=limits.max_prompt_tokens, actual=prompt_tokens)
    return None


def _asked_max_tokens(request: SamplingFields) -> tuple[str, int] | None:
    """The generation length the client asked for, and the field it used (chat's newer name wins, as upstream)."""
    # Only chat defines max_completion_tokens; on a completion it is an unknown extra field of any type.
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        return "max_completion_tokens", request.max_completion_tokens
    if request.max_tokens is not None:
        return "max_tokens", request.max_tokens
    return None


def timeout_error(kind: Literal["request", "stream_idle"], limits: LimitsConfig) -> RequestTimedOut:
    """The error for a deadline the ingress saw pass: a 408 before the response starts, an error event after."""
    if kind == "request":
        return RequestTimedOut(f"the request did not finish within {limits.request_timeout_s:g} s")
    return RequestTimedOut(
        f"the stream produced nothing for {limits.stream_idle_timeout_s:g} s and was ended",
        code="stream_idle_timeout",
    )
