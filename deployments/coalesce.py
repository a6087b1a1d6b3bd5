"""How long an engine replica holds tokens before shipping them as one chunk.

Every chunk costs the serving path the same CPU whatever its size (a Ray stream item, an SSE frame, a proxy
write), so the replica's chunk rate, not its token rate, is what saturates the cores. With one stream, tokens
go out nearly one by one (low inter-token latency); with many, the window widens so that the replica's total
chunk rate stays near ``1000 / per_stream_ms`` chunks per second, up to ``max_ms``.
"""

from __future__ import annotations


def coalesce_window_s(active_streams: int, per_stream_ms: float, max_ms: float) -> float:
    """The window, in seconds, for a replica that is streaming ``active_streams`` responses."""
    return min(max_ms, per_stream_ms * max(active_streams, 1)) / 1000.0
