"""Measure one streamed OpenAI completion from its raw SSE bytes: TTFT, inter-token latency, tokens, errors.

Pure: the caller feeds ``(timestamp, bytes)`` pieces as they come off the socket, so a recorded stream can be
replayed in a test with made-up clocks. Nothing here knows about Locust or HTTP.

Definitions (the same as vLLM's ``benchmark_serving`` and the server's own metrics):

- **TTFT**: from sending the request to the first chunk whose delta carries non-empty text.
- **ITL** (one number per request): ``(t_last_text_chunk - t_first_text_chunk) / (output_tokens - 1)``, i.e. the
  mean time per output token after the first (vLLM calls it TPOT). Per-chunk gaps would measure the server's
  ~20 ms coalescing window rather than the model, since one chunk may carry several tokens; dividing the decode
  time by the token count from ``usage`` is exact whatever the chunking, because the server never holds back the
  first token (so the first chunk carries exactly one). Undefined (``None``) for answers of fewer than 2 tokens.
- **E2E**: from sending the request to the end of the stream (``[DONE]``).
- **Output tokens**: ``usage.completion_tokens`` from the closing chunk (requested with
  ``stream_options.include_usage``); counting chunks would undercount coalesced tokens.

A stream is malformed (a failure) if a payload is not JSON, carries an ``error`` object, ends without
``[DONE]``, or has no usage chunk.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class SSEDecoder:
    """Split a byte stream into SSE ``data`` payloads, whatever the read boundaries.

    Handles ``\\n``, ``\\r\\n`` and ``\\r`` line ends, comment lines (``: keep-alive``), fields other than
    ``data`` (ignored), and multi-line ``data`` fields (joined with ``\\n``, as the SSE spec says).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, piece: bytes) -> list[str]:
        """Return the payloads of every event completed by ``piece``."""
        self._buffer += piece
        events: list[str] = []
        while True:
            line, sep, rest = _split_line(self._buffer)
            if not sep:
                return events
            self._buffer = rest
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

    def flush(self) -> list[str]:
        """At end of stream: an event whose blank line never came is still delivered."""
        events: list[str] = []
        if self._buffer:
            event = self._line(self._buffer.rstrip(b"\r").decode("utf-8", errors="replace"))
            self._buffer = b""
            if event is not None:
                events.append(event)
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


def _split_line(buffer: bytes) -> tuple[bytes, bytes, bytes]:
    """The first line of ``buffer``, its terminator and the rest; an empty terminator if no line is complete."""
    lf, cr = buffer.find(b"\n"), buffer.find(b"\r")
    if cr == -1 or (lf != -1 and lf < cr):
        return (buffer[:lf], b"\n", buffer[lf + 1 :]) if lf != -1 else (b"", b"", buffer)
    if cr + 1 == len(buffer):  # a lone \r so far: its \n may still be on the way
        return b"", b"", buffer
    end = cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
    return buffer[:cr], buffer[cr:end], buffer[end:]


@dataclass(frozen=True, slots=True)
class StreamMetrics:
    """What one streamed request measured. Times in seconds; ``error`` is set when the stream was unusable."""

    ttft_s: float | None
    itl_s: float | None
    e2e_s: float
    output_tokens: int | None
    prompt_tokens: int | None
    chunks: int
    """Events that carried text (one chunk may carry several tokens)."""
    max_gap_s: float | None
    """The longest wait between two text chunks: a stall that a mean ITL would hide."""
    finish_reason: str | None
    error: str | None
    error_type: str | None = None
    """The OpenAI error ``type`` of an error event in the stream (``service_unavailable``: retryable)."""

    @property
    def ok(self) -> bool:
        return self.error is None


def _text(choice: dict[str, object]) -> str:
    """The text a chunk choice carries: ``delta.content`` for chat, ``text`` for completions."""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


class StreamMeter:
    """Feed timestamped pieces of one SSE response body; ``finish`` returns its ``StreamMetrics``."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._decoder = SSEDecoder()
        self._text_times: list[float] = []
        self._text_events = 0
        self._usage: dict[str, object] | None = None
        self._finish_reason: str | None = None
        self._done = False
        self._error: str | None = None
        self._error_type: str | None = None

    def feed(self, t: float, piece: bytes) -> None:
        for payload in self._decoder.feed(piece):
            self._event(t, payload)

    def finish(self, t: float) -> StreamMetrics:
        for payload in self._decoder.flush():
            self._event(t, payload)
        error = self._error
        if error is None and not self._done:
            error = "stream ended without [DONE]"
        if error is None and self._usage is None:
            error = "stream has no usage chunk (was stream_options.include_usage ignored?)"
        if error is None and not self._text_times:
            error = "stream carried no text"
        output_tokens = _int(self._usage, "completion_tokens")
        if error is None and output_tokens is None:
            error = "usage chunk has no integer completion_tokens"
        times = self._text_times
        itl = None
        if output_tokens is not None and output_tokens >= 2 and times:
            itl = (times[-1] - times[0]) / (output_tokens - 1)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return StreamMetrics(
            ttft_s=times[0] - self._start if times else None,
            itl_s=itl,
            e2e_s=t - self._start,
            output_tokens=output_tokens,
            prompt_tokens=_int(self._usage, "prompt_tokens"),
            chunks=self._text_events,
            max_gap_s=max(gaps) if gaps else None,
            finish_reason=self._finish_reason,
            error=error,
            error_type=self._error_type,
        )

    def _event(self, t: float, payload: str) -> None:
        if self._error is not None:
            return
        if self._done:
            self._error = "data after [DONE]"
            return
        if payload.strip() == "[DONE]":
            self._done = True
            return
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            self._error = f"payload is not JSON: {payload[:80]!r}"
            return
        if not isinstance(chunk, dict):
            self._error = f"payload is not a JSON object: {payload[:80]!r}"
            return
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            self._error = f"error event in stream: {message}"
            self._error_type = _error_type(error)
            return
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            if _text(choice):
                self._text_events += 1
                self._text_times.append(t)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self._finish_reason = reason


def _error_type(error: object) -> str | None:
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def error_type_of(body: str) -> str:
    """The OpenAI error ``type`` of an error response body (``{"error": {"type": ...}}``); empty if none."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return (_error_type(data.get("error")) if isinstance(data, dict) else None) or ""


def measure_answer(body: str, *, e2e_s: float) -> StreamMetrics:
    """Measure one non-streaming chat or text completion from its JSON body, as ``StreamMeter`` does a stream:
    an answer without usage or without text is malformed. No TTFT or ITL: the whole answer arrives at once."""
    error: str | None = None
    try:
        answer = json.loads(body)
    except ValueError:
        answer, error = None, f"body is not JSON: {body[:80]!r}"
    if error is None and not isinstance(answer, dict):
        answer, error = None, f"body is not a JSON object: {body[:80]!r}"
    answer = answer if isinstance(answer, dict) else {}
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
    choices = answer.get("choices") if isinstance(answer.get("choices"), list) else []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    text = message.get("content") if isinstance(message, dict) else first.get("text")
    output_tokens = _int(usage, "completion_tokens")
    if error is None and "error" in answer:
        error = f"error in answer: {answer['error']}"
    if error is None and not (isinstance(text, str) and text):
        error = "answer carried no text"
    if error is None and output_tokens is None:
        error = "answer has no integer usage.completion_tokens"
    reason = first.get("finish_reason")
    return StreamMetrics(
        ttft_s=None,
        itl_s=None,
        e2e_s=e2e_s,
        output_tokens=output_tokens,
        prompt_tokens=_int(usage, "prompt_tokens"),
        chunks=0,
        max_gap_s=None,
        finish_reason=reason if isinstance(reason, str) else None,
        error=error,
        error_type=_error_type(answer.get("error")),
    )


def _int(mapping: dict[str, object] | None, key: str) -> int | None:
    value = None if mapping is None else mapping.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def measure_stream(pieces: Iterable[tuple[float, bytes]], *, start: float, end: float | None = None) -> StreamMetrics:
    """Measure a whole recorded stream; ``end`` defaults to the last piece's timestamp."""
    meter = StreamMeter(start)
    last = start
    for t, piece in pieces:
        meter.feed(t, piece)
        last = t
    return meter.finish(last if end is None else end)


def iter_payloads(body: bytes) -> Iterator[str]:
    """Every ``data`` payload of a complete SSE body (for tests and debugging)."""
    decoder = SSEDecoder()
    yield from decoder.feed(body)
    yield from decoder.flush()
