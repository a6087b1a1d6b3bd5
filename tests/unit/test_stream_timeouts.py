import asyncio

import pytest

from deployments.types import EngineChunk
from serve_app.limits import LimitsConfig, RequestTimedOut
from serve_app.pipeline import _next_chunk, _prepend


class SlowStream:
    """Stands in for a Ray streaming response: yields chunks with a delay; records cancellation."""

    def __init__(self, delays: list[float]) -> None:
        self._delays = list(delays)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> EngineChunk:
        if not self._delays:
            raise StopAsyncIteration
        await asyncio.sleep(self._delays.pop(0))
        return EngineChunk("x", 1, "stop" if not self._delays else None)

    def cancel(self) -> None:
        self.cancelled = True


def test_a_chunk_within_the_idle_timeout_passes():
    limits = LimitsConfig(stream_idle_timeout_s=1)
    chunk = asyncio.run(_next_chunk(SlowStream([0.0]), 1.0, limits))
    assert chunk.text == "x"


def test_a_silent_stream_times_out_with_a_408_error():
    limits = LimitsConfig(stream_idle_timeout_s=0.05)
    with pytest.raises(RequestTimedOut) as info:
        asyncio.run(_next_chunk(SlowStream([1.0]), 0.05, limits))
    assert info.value.status_code == 408 and info.value.code == "stream_idle_timeout"


def test_an_idle_stream_is_ended_cancelled_and_its_tokens_released():
    limits = LimitsConfig(stream_idle_timeout_s=0.05)
    stream = SlowStream([0.0, 1.0])
    released: list[int] = []

    async def consume() -> list[str]:
        first = await stream.__anext__()
        seen = []
        async for chunk in _prepend(first, stream, 0.05, limits, released.append, lambda *a: None):
            seen.append(chunk.text)
        return seen

    with pytest.raises(RequestTimedOut):
        asyncio.run(consume())
    assert stream.cancelled and released == [1]
