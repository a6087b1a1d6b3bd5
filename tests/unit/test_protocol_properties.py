"""Property tests for the edges untrusted input crosses: request parsing, and the SSE framing of streamed text.

Parsing: whatever JSON a client sends, validation fails only with pydantic's ``ValidationError`` (HTTP) or the
project's 400 (handle callers), never with anything that would become a 500; valid requests survive a dump and
re-parse unchanged. SSE: whatever text the engine produces, framed by the ingress and parsed by the load-test
client (``loadtests/sse.py``), comes back identical, however the bytes are split across reads.
"""

from __future__ import annotations

import asyncio
import json

from fastapi.exceptions import RequestValidationError
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from deployments.postprocess import SSE_DONE, StreamFormatter, new_meta, sse_event
from deployments.types import EngineChunk
from loadtests.sse import SSEDecoder, iter_payloads, measure_stream
from serve_app.errors import InvalidRequest
from serve_app.ingress import _parse, _validation_error
from serve_app.limits import LimitsConfig, check_request
from serve_app.protocol import ChatCompletionRequest, CompletionRequest

SETTINGS = settings(max_examples=100, deadline=None, database=None)
REQUEST_TYPES = (ChatCompletionRequest, CompletionRequest)

# ---- strategies: JSON as a client might send it ----

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# ---- strategies: valid requests ----

text = st.text(max_size=16)
stop_text = st.text(min_size=1, max_size=6)
valid_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "developer", "tool"]),
        "content": st.none()
        | text
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=3),
    },
    optional={"name": text},
)
sampling_fields = {
    "max_tokens": st.integers(min_value=1, max_value=10**6),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0, max_value=1, exclude_min=True),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "stop": st.none() | stop_text | st.lists(stop_text, max_size=4),
    "seed": st.none() | st.integers(min_value=-(2**63), max_value=2**63),
    "presence_penalty": st.floats(min_value=-2, max_value=2),
    "frequency_penalty": st.floats(min_value=-2, max_value=2),
    "user": text,
    "some_future_field": json_values,  # unknown fields are kept, as OpenAI's server does
}
valid_chat = st.fixed_dictionaries(
    {"model": text, "messages": st.lists(valid_message, min_size=1, max_size=4)},
    optional={**sampling_fields, "max_completion_tokens": st.integers(min_value=1, max_value=10**6)},
)
valid_completion = st.fixed_dictionaries(
    {"model": text, "prompt": text | st.lists(text, min_size=1, max_size=1)}, optional=sampling_fields
)

# ---- strategies: anything a client might send ----

message_like = valid_message | st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "wizard", ""]) | json_values},
    optional={
        "content": json_values | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": json_values})),
        "name": json_values,
    },
)
# Each field valid or anything, so that bodies get deep into validation and some pass it; fields this server knows
# but refuses (logprobs, tools, ...) take any value, to reach ``unsupported()`` with odd ones.
near_valid_bodies = st.fixed_dictionaries(
    {"model": st.just("tiny") | json_values},
    optional={
        **{field: strategy | json_values for field, strategy in sampling_fields.items()},
        "max_completion_tokens": st.integers(min_value=1, max_value=100) | json_values,
        "messages": st.lists(message_like, max_size=3) | json_values,
        "prompt": text | st.lists(text, max_size=2) | json_values,
        **{field: json_values for field in ("logprobs", "top_logprobs", "tools", "echo")},
        "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | json_values,
    },
)
FIELDS = [*sampling_fields, "model", "messages", "prompt", "max_completion_tokens", "logprobs", "tools", "echo"]
# A valid request with one field replaced by anything: the closest a fuzzer gets to a real client's mistake.
one_bad_field = st.tuples(valid_chat | valid_completion, st.sampled_from(FIELDS), json_values).map(
    lambda case: {**case[0], case[1]: case[2]}
)
bodies = valid_chat | valid_completion | one_bad_field | near_valid_bodies | json_values


def _http_error_body(error: ValidationError) -> dict:
    """What the ingress's FastAPI handler answers for this validation failure (FastAPI prefixes loc with body)."""
    errors = [{**item, "loc": ("body", *item["loc"])} for item in error.errors()]
    response = asyncio.run(_validation_error(None, RequestValidationError(errors)))
    assert response.status_code == 400
    return json.loads(response.body)


def _exercise(request: ChatCompletionRequest | CompletionRequest) -> None:
    """Everything the pipeline asks of a parsed request; none of it may raise."""
    request.unsupported()
    request.stop_list()
    request.requested_max_tokens()
    if isinstance(request, ChatCompletionRequest):
        for message in request.messages:
            message.text()
    else:
        request.prompt_text()
    check_request(request, LimitsConfig(), prompt_tokens=1)


# ---- parsing ----


@SETTINGS
@given(body=bodies)
# Found by this test: an unknown field on a completion (here chat's max_completion_tokens) is any type.
@example(body={"model": "tiny", "prompt": "", "max_completion_tokens": []})
def test_any_json_body_is_a_request_or_a_400_over_http_and_handles(body):
    for model in REQUEST_TYPES:
        try:
            request = model.model_validate(body)
        except ValidationError as error:
            request = None
            payload = _http_error_body(error)["error"]
            assert payload["type"] == "invalid_request_error"
            assert payload["message"]
            assert payload["param"] is None or isinstance(payload["param"], str)
        else:
            _exercise(request)
        # A handle caller's dict goes through the ingress's own parse, which must agree and raise only a 400.
        try:
            parsed = _parse(model, body)
        except InvalidRequest as error:
            assert error.status_code == 400 and error.message
            assert error.to_response().error.type == "invalid_request_error"
        else:
            assert parsed == request


@SETTINGS
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode) | bodies.map(lambda b: json.dumps(b).encode()))
def test_any_bytes_are_a_parsed_request_or_a_validation_error(raw):
    for model in REQUEST_TYPES:
        try:
            request = model.model_validate_json(raw)
        except ValidationError as error:
            assert error.errors()
        else:
            _exercise(request)


@SETTINGS
@given(body=valid_chat)
def test_valid_chat_requests_round_trip(body):
    request = ChatCompletionRequest.model_validate(body)
    assert request.model_dump(exclude_unset=True) == body
    assert ChatCompletionRequest.model_validate_json(request.model_dump_json()) == request
    _exercise(request)


@SETTINGS
@given(body=valid_completion)
def test_valid_completion_requests_round_trip(body):
    request = CompletionRequest.model_validate(body)
    assert request.model_dump(exclude_unset=True) == body
    assert CompletionRequest.model_validate_json(request.model_dump_json()) == request
    _exercise(request)


# ---- SSE framing: the ingress's frames, the load-test client's parser ----

# Any text an engine might produce: newlines, CR, NUL, JSON metacharacters, "data:" lookalikes, any script.
engine_text = st.text(max_size=24) | st.sampled_from(
    ["\n\n", "\r\n", "\r", "data: x\n\n", '"}]', "[DONE]", "é🙂\u2028"]
)
chunks = st.lists(st.tuples(engine_text, st.integers(min_value=1, max_value=4)), min_size=1, max_size=8)


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


def _stream_body(kind: str, pieces: list[tuple[str, int]]) -> bytes:
    formatter = StreamFormatter(new_meta("id-1", "tiny-v1", kind, 7), include_usage=True)
    frames = []
    for i, (piece, tokens) in enumerate(pieces):
        last = i == len(pieces) - 1
        frames.append(sse_event(formatter.chunk(EngineChunk(piece, tokens, "stop" if last else None))))
    frames.append(sse_event(formatter.usage_chunk()))
    frames.append(SSE_DONE)
    return "".join(frames).encode()


@SETTINGS
@given(payload_text=engine_text)
def test_an_sse_frame_is_one_data_line_and_a_blank_line(payload_text):
    frame = sse_event({"choices": [{"delta": {"content": payload_text}}]})
    assert frame.startswith("data: ") and frame.endswith("\n\n")
    assert "\n" not in frame[:-2] and "\r" not in frame
    (payload,) = iter_payloads(frame.encode())
    assert json.loads(payload)["choices"][0]["delta"]["content"] == payload_text


@SETTINGS
@given(
    kind=st.sampled_from(["chat", "completion"]), pieces=chunks, cuts=st.lists(st.integers(min_value=0), max_size=12)
)
def test_streamed_text_survives_framing_and_any_read_boundaries(kind, pieces, cuts):
    body = _stream_body(kind, pieces)
    decoder = SSEDecoder()
    payloads = []
    for part in _split(body, cuts):
        payloads += decoder.feed(part)
    payloads += decoder.flush()
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    field = (lambda c: c["delta"].get("content", "")) if kind == "chat" else (lambda c: c["text"])
    assert "".join(field(e["choices"][0]) for e in events if e["choices"]) == "".join(p for p, _ in pieces)
    assert events[-1]["usage"]["completion_tokens"] == sum(n for _, n in pieces)

    metrics = measure_stream([(0.1 * i, part) for i, part in enumerate(_split(body, cuts), 1)], start=0.0)
    assert metrics.output_tokens == sum(n for _, n in pieces)
    if any(p for p, _ in pieces):
        assert metrics.ok, metrics.error
        assert metrics.finish_reason == "stop"


@SETTINGS
@given(message=engine_text)
def test_an_error_event_mid_stream_reaches_the_client_intact(message):
    error = InvalidRequest(message).to_response().model_dump()
    body = _stream_body("chat", [("a", 1)]).replace(SSE_DONE.encode(), b"")
    body += (sse_event(error) + SSE_DONE).encode()
    metrics = measure_stream([(0.1, body)], start=0.0)
    assert metrics.error == f"error event in stream: {message}"


# The SSE spec's own multi-line framing (one data: line per line of text). The ingress sends JSON, which never
# holds a raw line break, but the parser must also honour the spec for other servers it measures.
spec_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=24)


@SETTINGS
@given(payload_text=spec_text, cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_multiline_data_fields_rejoin_with_newlines(payload_text, cuts):
    body = ("".join(f"data: {line}\n" for line in payload_text.split("\n")) + "\n").encode()
    decoder = SSEDecoder()
    payloads = []
    for part in _split(body, cuts):
        payloads += decoder.feed(part)
    assert payloads + decoder.flush() == [payload_text]
