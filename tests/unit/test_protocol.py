import pytest
from pydantic import ValidationError

from serve_app.protocol import ChatCompletionRequest, CompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def test_chat_request_accepts_openai_shapes():
    req = ChatCompletionRequest.model_validate(
        {
            "model": "tiny",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "temperature": 1,
            "stop": "x",
            "stream_options": {"include_usage": True},
            "some_future_field": 1,
        }
    )
    assert req.messages[1].text() == "ab"
    assert req.stop_list() == ["x"]
    assert req.temperature == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("temperature", "0.5"),
        ("top_p", 0),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("max_tokens", -3),
        ("max_tokens", "10"),
        ("max_tokens", 1.5),
        ("n", 2),
        ("stream", "yes"),
        ("stop", ["a", "b", "c", "d", "e"]),
        ("stop", ""),
        ("messages", []),
        ("messages", [{"role": "wizard", "content": "x"}]),
        ("messages", "hello"),
        ("model", 3),
    ],
)
def test_chat_request_rejects_bad_values(field, value):
    data = {"model": "tiny", "messages": MESSAGES, field: value}
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(data)
    assert info.value.errors()[0]["loc"][0] == field


def test_max_completion_tokens_wins_over_max_tokens():
    req = ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=5, max_completion_tokens=7)
    assert req.requested_max_tokens() == 7


def test_completion_prompt_forms():
    assert CompletionRequest(model="m", prompt="abc").prompt_text() == "abc"
    assert CompletionRequest(model="m", prompt=["abc"]).prompt_text() == "abc"
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt=["a", "b"])
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": 5})


def test_known_but_unsupported_fields_are_reported():
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, "logprobs": True})
    assert req.unsupported() == "logprobs"
    plain = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MESSAGES, "logprobs": False, "response_format": {"type": "text"}}
    )
    assert plain.unsupported() is None
