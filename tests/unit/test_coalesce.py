import asyncio
from collections.abc import AsyncIterator

from deployments.coalesce import coalesce_window_s, coalesced_chunks, collected
from deployments.types import EngineChunk, EngineResult

Output = tuple[str, int, str | None]


def test_one_stream_gets_the_per_stream_window() -> None:
    assert coalesce_window_s(1, per_stream_ms=2, max_ms=100) == 0.002


def test_window_grows_with_streams_keeping_the_chunk_rate() -> None:
    # 32 streams at 64 ms each: 500 chunks/s, the same as one stream at 2 ms.
    assert coalesce_window_s(32, per_stream_ms=2, max_ms=100) == 0.064


def test_window_is_capped() -> None:
    assert coalesce_window_s(64, per_stream_ms=2, max_ms=100) == 0.1


def test_no_streams_counts_as_one() -> None:
    assert coalesce_window_s(0, per_stream_ms=2, max_ms=100) == 0.002


def test_zero_disables_coalescing() -> None:
    assert coalesce_window_s(50, per_stream_ms=0, max_ms=100) == 0.0


async def _outputs(items: list[Output], closed: list[bool]) -> AsyncIterator[Output]:
    try:
        for item in items:
            yield item
    finally:
        closed.append(True)


async def _chunks(items: list[Output], window_s: float) -> list[EngineChunk]:
    return [chunk async for chunk in coalesced_chunks(_outputs(items, []), lambda: window_s)]


_STREAM: list[Output] = [("Hel", 1, None), ("lo", 1, None), (" wor", 1, None), ("ld", 1, "stop")]


def test_first_text_goes_out_at_once_and_the_rest_waits_for_the_window() -> None:
    chunks = asyncio.run(_chunks(_STREAM, window_s=3600))
    assert chunks == [EngineChunk("Hel", 1), EngineChunk("lo world", 3, "stop")]


def test_a_zero_window_sends_every_output() -> None:
    chunks = asyncio.run(_chunks(_STREAM, window_s=0))
    assert [c.text for c in chunks] == ["Hel", "lo", " wor", "ld"]
    assert sum(c.num_tokens for c in chunks) == 4


def test_an_empty_first_output_does_not_hold_the_first_text() -> None:
    # The first token of a multi-byte character decodes to nothing; the text after it must not wait a window.
    chunks = asyncio.run(_chunks([("", 1, None), ("é", 1, None), ("!", 1, "length")], window_s=3600))
    assert chunks == [EngineChunk("", 1), EngineChunk("é", 1), EngineChunk("!", 1, "length")]


def test_closing_the_chunks_closes_the_engine_outputs() -> None:
    closed: list[bool] = []

    async def take_one() -> EngineChunk:
        chunks = coalesced_chunks(_outputs(_STREAM, closed), lambda: 3600)
        first = await anext(chunks)
        await chunks.aclose()
        return first

    assert asyncio.run(take_one()) == EngineChunk("Hel", 1)
    assert closed == [True]


def test_collected_joins_the_whole_output() -> None:
    closed: list[bool] = []
    result = asyncio.run(collected(_outputs(_STREAM, closed)))
    assert result == EngineResult("Hello world", 4, "stop")
    assert closed == [True]
