"""The official openai client against the real graph, unchanged: chat and completions, streaming and not."""

from __future__ import annotations

import httpx
import openai
import pytest

VARIANTS = {"tiny-v1", "tiny-v2"}
HELLO = [{"role": "user", "content": "def fibonacci(n):"}]


def test_models_lists_the_routed_name_and_each_variant(openai_client):
    ids = {model.id for model in openai_client.models.list().data}
    assert ids == {"tiny", *VARIANTS}


def test_chat_completion(openai_client):
    reply = openai_client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0)
    assert reply.model in VARIANTS
    assert reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert len(choice.message.content) > 0
    assert choice.finish_reason == "length"  # the built-in models never emit EOS under greedy decoding
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_stream_with_usage(openai_client):
    stream = openai_client.chat.completions.create(
        model="tiny-v1",
        messages=HELLO,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert {c.model for c in chunks} == {"tiny-v1"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 20
    # Streaming and non-streaming give the same greedy text.
    whole = openai_client.chat.completions.create(model="tiny-v1", messages=HELLO, max_tokens=20, temperature=0)
    assert text == whole.choices[0].message.content


def test_completion_and_its_stream(openai_client):
    reply = openai_client.completions.create(model="tiny-v2", prompt="import os\n", max_tokens=10, temperature=0)
    assert reply.model == "tiny-v2"
    assert reply.usage.completion_tokens == 10
    pieces = list(
        openai_client.completions.create(
            model="tiny-v2", prompt="import os\n", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces) == reply.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_completion_default_max_tokens_is_openais_16(openai_client):
    reply = openai_client.completions.create(model="tiny-v1", prompt="class Foo:", temperature=0)
    assert reply.usage.completion_tokens == 16


def test_greedy_is_deterministic_and_variants_differ(openai_client):
    def greedy(model: str) -> str:
        out = openai_client.completions.create(model=model, prompt="for i in range(", max_tokens=16, temperature=0)
        return out.choices[0].text

    assert greedy("tiny-v1") == greedy("tiny-v1")
    assert greedy("tiny-v1") != greedy("tiny-v2")


def test_stop_string_cuts_output_and_says_stop(openai_client):
    prompt = "while True:"
    full = openai_client.completions.create(model="tiny-v1", prompt=prompt, max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"need a non-blank stop string from {text!r}"
    cut = openai_client.completions.create(model="tiny-v1", prompt=prompt, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_seeded_sampling_is_reproducible(openai_client):
    def sample() -> str:
        out = openai_client.completions.create(
            model="tiny-v1", prompt="x = ", max_tokens=12, temperature=1.0, seed=1234
        )
        return out.choices[0].text

    assert sample() == sample()


def test_headers_name_the_variant_and_carry_request_id(http: httpx.Client):
    r = http.post(
        "/v1/chat/completions",
        json={"model": "tiny-v2", "messages": HELLO, "max_tokens": 2},
        headers={"x-request-id": "trace-abc-123"},
    )
    assert r.status_code == 200
    assert r.headers["x-servefleet-variant"] == "tiny-v2"
    assert r.headers["x-request-id"] == "trace-abc-123"
    generated = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 2})
    assert len(generated.headers.get_list("x-request-id")) == 1
    assert generated.headers["x-request-id"]
    assert generated.headers["x-servefleet-variant"] == generated.json()["model"]


def test_sse_wire_format(http: httpx.Client):
    body = {"model": "tiny-v1", "messages": HELLO, "max_tokens": 8, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-servefleet-variant"] == "tiny-v1"
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_health_and_readiness(http: httpx.Client):
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "variants": {"tiny-v1": True, "tiny-v2": True}}


def test_openai_client_raises_typed_errors(openai_client):
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-4", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model="tiny", messages=HELLO, temperature=5)
    assert info.value.body["param"] == "temperature"
