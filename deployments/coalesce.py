"""How long an engine replica holds tokens before shipping them as one chunk.

Every chunk costs the serving path the same CPU whatever its size (a Ray stream item, an SSE frame, a proxy
write), so the replica's chunk rate, not its token rate, is what saturates the cores. With one stream, tokens
go out nearly one by one (low inter-token latency); with many, the window widens so that the replica's total
chunk rate stays near ``1000 / per_stream_ms`` chunks per second, up to ``max_ms``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from deployments.types import EngineChunk, EngineResult


def coalesce_window_s(active_streams: int, per_stream_ms: float, max_ms: float) -> float:
    """The window, in seconds, for a replica that is streaming ``active_streams`` responses."""
    return min(max_ms, per_stream_ms * max(active_streams, 1)) / 1000.0


async def coalesced_chunks(
    outputs: AsyncIterator[tuple[str, int, str | None]], window_s: Callable[[], float]
) -> AsyncIterator[EngineChunk]:
    """Turn an engine's ``(text, num_tokens, finish_reason)`` outputs into chunks. The first visible text goes
    out at once (time to first token); later outputs that arrive within ``window_s()`` of the last chunk travel
    together. Closing this generator closes ``outputs``, which aborts the engine request behind it."""
    texts: list[str] = []
    tokens = 0
    last_sent = 0.0
    # Until some text has gone out, every output is sent at once: a first token that decodes to nothing
    # (part of a multi-byte character) must not hold the first visible text for a whole window.
    shown = False
    async with contextlib.aclosing(outputs):
        async for text, num_tokens, finish in outputs:
            texts.append(text)
            tokens += num_tokens
            now = time.monotonic()
            if finish is not None or not shown or now - last_sent >= window_s():
                chunk = EngineChunk("".join(texts), tokens, finish)
                yield chunk
                shown = shown or bool(chunk.text)
                texts.clear()
                tokens = 0
                last_sent = now


async def collected(outputs: AsyncIterator[tuple[str, int, str | None]]) -> EngineResult:
    """The whole output of a request run to completion."""
    texts: list[str] = []
    tokens = 0
    finish: str | None = None
    async with contextlib.aclosing(outputs):
        async for text, num_tokens, reason in outputs:
            texts.append(text)
            tokens += num_tokens
            finish = reason
    return EngineResult("".join(texts), tokens, finish)
