import json
import pickle

from deployments.postprocess import SSE_DONE, Postprocessor, StreamFormatter, new_meta, sse_event
from deployments.types import EngineChunk, EngineResult
from serve_app.errors import ContextLengthExceeded, EngineUnavailable
from serve_app.protocol import ChatCompletion, ChatCompletionChunk, Completion


def test_chat_response_shape_and_usage():
    meta = new_meta("chatcmpl-1", "v1", "chat", prompt_tokens=5)
    out = Postprocessor().finalize(meta, EngineResult("hello", 3, "length"))
    assert isinstance(out, ChatCompletion)
    assert out.model == "v1"
    assert out.choices[0].message.content == "hello"
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (5, 3, 8)


def test_completion_response_shape():
    out = Postprocessor().finalize(new_meta("cmpl-1", "v2", "completion", 2), EngineResult("ab", 2, "stop"))
    assert isinstance(out, Completion)
    assert out.choices[0].text == "ab" and out.choices[0].finish_reason == "stop"


def test_stream_formatter_role_first_then_content_then_usage():
    fmt = StreamFormatter(new_meta("chatcmpl-9", "v1", "chat", 4), include_usage=True)
    first = fmt.chunk(EngineChunk("he", 2))
    last = fmt.chunk(EngineChunk("llo", 3, "stop"))
    closing = fmt.usage_chunk()
    for payload in (first, last, closing):
        ChatCompletionChunk.model_validate(payload)  # the shape the openai client parses
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert last["choices"][0]["delta"] == {"content": "llo"}
    assert last["choices"][0]["finish_reason"] == "stop"
    assert closing["choices"] == []
    assert closing["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_stream_without_usage_has_no_closing_chunk():
    fmt = StreamFormatter(new_meta("cmpl-1", "v1", "completion", 1), include_usage=False)
    assert fmt.chunk(EngineChunk("x", 1))["choices"][0]["text"] == "x"
    assert fmt.usage_chunk() is None


def test_sse_framing():
    event = sse_event({"a": "é\n"})
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event[len("data: ") :]) == {"a": "é\n"}
    assert "\n" not in event[:-2]  # a newline in content must not break the frame
    assert SSE_DONE == "data: [DONE]\n\n"


def test_domain_errors_survive_pickling_for_ray():
    error = pickle.loads(pickle.dumps(ContextLengthExceeded("too long", param="messages")))
    assert (error.status_code, error.param, error.code) == (400, "messages", "context_length_exceeded")
    body = EngineUnavailable("gone").to_response().model_dump()
    assert body["error"]["type"] == "service_unavailable"
    assert EngineUnavailable("gone").retryable
