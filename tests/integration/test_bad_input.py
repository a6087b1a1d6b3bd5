"""Every kind of bad input gets an OpenAI-style 4xx with a message, never a 500 or a hang."""

from __future__ import annotations

import httpx
import pytest

MSG = [{"role": "user", "content": "hi"}]
LONG = "word " * 2000  # far beyond the 1024-token context

CASES = [
    # (name, path, body, status, param)
    ("unknown model", "/v1/chat/completions", {"model": "gpt-4", "messages": MSG}, 404, "model"),
    ("empty messages", "/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("missing messages", "/v1/chat/completions", {"model": "tiny"}, 400, "messages"),
    ("messages not a list", "/v1/chat/completions", {"model": "tiny", "messages": "hi"}, 400, "messages"),
    ("bad role", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "x", "content": "a"}]}, 400, None),
    (
        "prompt too long",
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": LONG}]},
        400,
        "messages",
    ),
    ("completion prompt too long", "/v1/completions", {"model": "tiny", "prompt": LONG}, 400, "prompt"),
    ("max_tokens zero", "/v1/chat/completions", {"model": "tiny", "messages": MSG, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    (
        "max_tokens beyond context",
        "/v1/chat/completions",
        {"model": "tiny", "messages": MSG, "max_tokens": 5000},
        400,
        "max_tokens",
    ),
    (
        "max_tokens wrong type",
        "/v1/chat/completions",
        {"model": "tiny", "messages": MSG, "max_tokens": "ten"},
        400,
        "max_tokens",
    ),
    (
        "temperature too high",
        "/v1/chat/completions",
        {"model": "tiny", "messages": MSG, "temperature": 2.5},
        400,
        "temperature",
    ),
    (
        "temperature negative",
        "/v1/completions",
        {"model": "tiny", "prompt": "a", "temperature": -1},
        400,
        "temperature",
    ),
    ("top_p zero", "/v1/chat/completions", {"model": "tiny", "messages": MSG, "top_p": 0}, 400, "top_p"),
    ("top_p above one", "/v1/completions", {"model": "tiny", "prompt": "a", "top_p": 1.1}, 400, "top_p"),
    ("stream not bool", "/v1/chat/completions", {"model": "tiny", "messages": MSG, "stream": "yes"}, 400, "stream"),
    ("n above one", "/v1/chat/completions", {"model": "tiny", "messages": MSG, "n": 3}, 400, "n"),
    ("empty prompt", "/v1/completions", {"model": "tiny", "prompt": ""}, 400, "prompt"),
    ("prompt wrong type", "/v1/completions", {"model": "tiny", "prompt": 42}, 400, "prompt"),
    (
        "unsupported logprobs",
        "/v1/chat/completions",
        {"model": "tiny", "messages": MSG, "logprobs": True},
        400,
        "logprobs",
    ),
]


def assert_openai_error(r: httpx.Response, status: int, param: str | None) -> None:
    assert r.status_code == status, r.text
    assert len(r.headers.get_list("x-request-id")) == 1
    body = r.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"]
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize(("name", "path", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(http, name, path, body, status, param):
    assert_openai_error(http.post(path, json=body), status, param)


@pytest.mark.parametrize(("name", "path", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_streaming_request_is_an_error_not_a_stream(http, name, path, body, status, param):
    if name == "stream not bool":
        pytest.skip("the case is about the stream field itself")
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        r.read()
    assert r.headers["content-type"].startswith("application/json")
    assert_openai_error(r, status, param)


def test_malformed_json(http):
    r = http.post(
        "/v1/chat/completions", content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"}
    )
    assert_openai_error(r, 400, None)
    assert "JSON" in r.json()["error"]["message"]


def test_unknown_override_variant(http):
    r = http.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": MSG}, headers={"x-servefleet-variant": "tiny-v9"}
    )
    assert_openai_error(r, 400, "x-servefleet-variant")


def test_context_error_names_the_limit(http):
    r = http.post("/v1/completions", json={"model": "tiny-v1", "prompt": LONG})
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "1024" in r.json()["error"]["message"]


def test_unknown_route_and_method(http):
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/chat/completions").status_code == 405
