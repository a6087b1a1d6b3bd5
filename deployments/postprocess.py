"""Postprocess: finish reasons, usage and the OpenAI response shape.

Stop strings are enforced inside the engine (vLLM's ``SamplingParams.stop``) so that a stopped sequence leaves
the batch at once instead of generating past its stop; what arrives here is already cut, and its finish reason
says so.

Non-streaming responses are shaped by the ``Postprocessor`` deployment, called once per request. A stream is
shaped chunk by chunk by ``StreamFormatter`` in the process that holds the client's connection: sending every
chunk through another deployment would add a hop per chunk, which is exactly what this graph avoids.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from deployments.types import EngineChunk, EngineResult, RequestKind
from serve_app.protocol import (
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    ResponseMessage,
    Usage,
)

_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


def finish_reason(raw: str | None) -> str | None:
    """vLLM's finish reason in OpenAI's words (they agree on the ones a text model produces)."""
    if raw is None:
        return None
    return _FINISH_REASONS.get(raw, "stop")


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What the response needs to know beyond the engine's output."""

    response_id: str
    variant: str
    kind: RequestKind
    prompt_tokens: int
    created: int


def new_meta(response_id: str, variant: str, kind: RequestKind, prompt_tokens: int) -> ResponseMeta:
    return ResponseMeta(response_id, variant, kind, prompt_tokens, int(time.time()))


def shape_response(meta: ResponseMeta, result: EngineResult) -> ChatCompletion | Completion:
    used = usage(meta.prompt_tokens, result.num_tokens)
    reason = finish_reason(result.finish_reason)
    if meta.kind == "chat":
        return ChatCompletion(
            id=meta.response_id,
            created=meta.created,
            model=meta.variant,
            choices=[ChatChoice(message=ResponseMessage(content=result.text), finish_reason=reason)],
            usage=used,
        )
    return Completion(
        id=meta.response_id,
        created=meta.created,
        model=meta.variant,
        choices=[CompletionChoice(text=result.text, finish_reason=reason)],
        usage=used,
    )


class Postprocessor:
    """Plain class; the builder makes it a deployment."""

    def finalize(self, meta: ResponseMeta, result: EngineResult) -> ChatCompletion | Completion:
        return shape_response(meta, result)


class StreamFormatter:
    """Turns engine chunks into OpenAI stream chunk payloads (dicts), one per engine chunk.

    Built with plain dicts rather than pydantic models: this runs for every chunk of every stream.
    """

    def __init__(self, meta: ResponseMeta, *, include_usage: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self.completion_tokens = 0
        self._first = True
        self.finish_reason: str | None = None
        if meta.kind == "chat":
            self._object = "chat.completion.chunk"
        else:
            self._object = "text_completion"

    def _envelope(self, choices: list[dict[str, object]]) -> dict[str, object]:
        return {
            "id": self.meta.response_id,
            "object": self._object,
            "created": self.meta.created,
            "model": self.meta.variant,
            "choices": choices,
        }

    def _choice(self, text: str | None, reason: str | None, *, role: bool) -> dict[str, object]:
        if self.meta.kind == "chat":
            delta: dict[str, object] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}

    def chunk(self, chunk: EngineChunk) -> dict[str, object]:
        self.completion_tokens += chunk.num_tokens
        reason = finish_reason(chunk.finish_reason)
        if reason is not None:
            self.finish_reason = reason
        payload = self._envelope([self._choice(chunk.text, reason, role=self._first)])
        self._first = False
        return payload

    def usage_chunk(self) -> dict[str, object] | None:
        """The closing usage-only chunk that OpenAI sends when ``stream_options.include_usage`` is set."""
        if not self.include_usage:
            return None
        payload = self._envelope([])
        payload["usage"] = usage(self.meta.prompt_tokens, self.completion_tokens).model_dump()
        return payload


def sse_event(payload: dict[str, object]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
