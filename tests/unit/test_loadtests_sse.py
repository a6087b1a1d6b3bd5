import json
import re

import pytest

from deployments.postprocess import SSE_DONE, StreamFormatter, new_meta, sse_event
from deployments.types import EngineChunk
from loadtests.records import RecordWriter, build_record, read_records, to_row, write_records
from loadtests.sse import SSEDecoder, StreamMeter, iter_payloads, measure_stream


def chat_chunk(content=None, *, role=False, finish=None):
    delta = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def event(payload) -> bytes:
    return f"data: {json.dumps(payload) if not isinstance(payload, str) else payload}\n\n".encode()


USAGE = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}

# A recorded stream, (seconds since the request was sent, bytes read): a role-only chunk, one token, two
# tokens coalesced into one chunk, two more, the finish chunk, usage and [DONE].
RECORDED = [
    (0.10, event(chat_chunk(role=True))),
    (0.30, event(chat_chunk("Hello"))),
    (0.35, event(chat_chunk(" there,"))),
    (0.40, event(chat_chunk(" friend"))),
    (0.70, event(chat_chunk("!", finish="length")) + event(USAGE)),
    (0.71, b"data: [DONE]\n\n"),
]


def test_recorded_stream_gives_ttft_itl_tokens_and_e2e():
    metrics = measure_stream(RECORDED, start=0.0)
    assert metrics.ok
    assert metrics.ttft_s == pytest.approx(0.30)  # the role-only chunk carries no text
    assert metrics.itl_s == pytest.approx((0.70 - 0.30) / (5 - 1))  # decode time over tokens after the first
    assert metrics.e2e_s == pytest.approx(0.71)
    assert metrics.output_tokens == 5
    assert metrics.prompt_tokens == 12
    assert metrics.chunks == 4
    assert metrics.max_gap_s == pytest.approx(0.30)
    assert metrics.finish_reason == "length"


@pytest.mark.parametrize("size", [1, 2, 7, 64])
def test_read_boundaries_do_not_change_the_result(size):
    body = b"".join(piece for _, piece in RECORDED)
    pieces = [(0.30, body[i : i + size]) for i in range(0, len(body), size)]
    metrics = measure_stream(pieces, start=0.0, end=1.0)
    assert metrics.ok and metrics.output_tokens == 5 and metrics.chunks == 4


def test_decoder_handles_crlf_comments_other_fields_and_multiline_data():
    decoder = SSEDecoder()
    body = b': keep-alive\r\nevent: message\r\nid: 1\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata:[DONE]\r\r'
    payloads = []
    for i in range(len(body)):  # byte by byte, so a \r\n split across reads is exercised
        payloads += decoder.feed(body[i : i + 1])
    payloads += decoder.flush()
    assert payloads == ['{"a":\n1}', "[DONE]"]


def test_an_event_without_its_blank_line_is_delivered_at_the_end():
    assert list(iter_payloads(b"data: 1\n\ndata: 2")) == ["1", "2"]


def test_completions_text_field_counts_as_text():
    pieces = [
        (0.2, event({"choices": [{"index": 0, "text": "a"}]})),
        (0.4, event({"choices": [{"index": 0, "text": "b"}], "usage": {"completion_tokens": 3}})),
        (0.5, b"data: [DONE]\n\n"),
    ]
    metrics = measure_stream(pieces, start=0.0)
    assert metrics.ok and metrics.ttft_s == pytest.approx(0.2) and metrics.itl_s == pytest.approx(0.1)


def test_a_single_token_answer_has_no_itl():
    pieces = [
        (0.2, event(chat_chunk("a")) + event({"choices": [], "usage": {"completion_tokens": 1}}) + SSE_DONE.encode())
    ]
    metrics = measure_stream(pieces, start=0.0)
    assert metrics.ok and metrics.itl_s is None and metrics.max_gap_s is None


@pytest.mark.parametrize(
    ("pieces", "error"),
    [
        ([(0.1, event(chat_chunk("a")) + event(USAGE))], "without \\[DONE\\]"),
        ([(0.1, event(chat_chunk("a")) + b"data: [DONE]\n\n")], "no usage chunk"),
        ([(0.1, event(USAGE) + b"data: [DONE]\n\n")], "no text"),
        ([(0.1, b"data: {not json\n\ndata: [DONE]\n\n")], "not JSON"),
        ([(0.1, b"data: [1, 2]\n\ndata: [DONE]\n\n")], "not a JSON object"),
        (
            [
                (
                    0.1,
                    event(chat_chunk("a"))
                    + event({"error": {"message": "engine died", "type": "x"}})
                    + SSE_DONE.encode(),
                )
            ],
            "error event in stream: engine died",
        ),
        (
            [(0.1, event(chat_chunk("a")) + event(USAGE) + SSE_DONE.encode() + event(chat_chunk("b")))],
            "after \\[DONE\\]",
        ),
        (
            [
                (
                    0.1,
                    event(chat_chunk("a"))
                    + event({"choices": [], "usage": {"completion_tokens": "5"}})
                    + SSE_DONE.encode(),
                )
            ],
            "integer",
        ),
        ([], "without \\[DONE\\]"),
    ],
)
def test_malformed_streams_are_errors(pieces, error):
    metrics = measure_stream(pieces, start=0.0, end=1.0)
    assert not metrics.ok
    assert metrics.e2e_s == pytest.approx(1.0)
    assert re.search(error, metrics.error), metrics.error


def test_the_servers_own_stream_format_is_understood():
    """Contract test: what deployments.postprocess emits, loadtests.sse must measure (text in the first chunk
    with the role, coalesced tokens, the usage chunk)."""
    formatter = StreamFormatter(new_meta("r1", "tiny-v2", "chat", prompt_tokens=9), include_usage=True)
    chunks = [EngineChunk("Hi", 1), EngineChunk(" there you", 3), EngineChunk(".", 1, finish_reason="stop")]
    pieces = [(0.1 * (i + 1), sse_event(formatter.chunk(c)).encode()) for i, c in enumerate(chunks)]
    pieces.append((0.35, (sse_event(formatter.usage_chunk()) + SSE_DONE).encode()))
    metrics = measure_stream(pieces, start=0.0)
    assert metrics.ok, metrics.error
    assert metrics.ttft_s == pytest.approx(0.1)
    assert metrics.output_tokens == 5
    assert metrics.itl_s == pytest.approx((0.3 - 0.1) / 4)
    assert metrics.finish_reason == "stop"


def test_meter_can_be_fed_incrementally():
    meter = StreamMeter(start=10.0)
    for t, piece in RECORDED:
        meter.feed(10.0 + t, piece)
    assert meter.finish(11.0).ttft_s == pytest.approx(0.30)


def test_records_round_trip_through_csv(tmp_path):
    ok = build_record(start_time=100.0, status=200, metrics=measure_stream(RECORDED, start=0.0), variant="tiny-v1")
    failed = build_record(start_time=101.0, status=503, metrics=None, error="HTTP 503: busy", e2e_s=0.01)
    broken = build_record(start_time=102.0, status=200, metrics=measure_stream(RECORDED[:2], start=0.0))
    path = tmp_path / "r.csv"
    write_records(path, [ok, failed])
    writer = RecordWriter(path)  # appending to an existing file writes no second header
    writer.write(broken)
    writer.close()
    assert read_records(path) == [ok, failed, broken]
    assert ok.ok and ok.end_time == pytest.approx(100.71) and ok.first_token_time == pytest.approx(100.3)
    assert not failed.ok and failed.ttft_s is None and to_row(failed)["ttft_s"] == ""
    assert not broken.ok and "DONE" in broken.error
