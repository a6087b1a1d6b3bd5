from deployments.coalesce import coalesce_window_s


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
