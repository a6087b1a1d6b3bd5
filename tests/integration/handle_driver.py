"""A separate Ray driver that calls the app through a deployment handle (run by test_handle_client.py).

Prints one JSON object with what it saw, so the test can compare it with what HTTP callers get.
"""

from __future__ import annotations

import json
import sys

from serve_app.client import ServeFleetClient
from serve_app.errors import ContextLengthExceeded, ModelNotFound
from serve_app.protocol import ChatCompletion, ChatCompletionChunk, Completion

PROMPT = [{"role": "user", "content": "def fibonacci(n):"}]


def main(address: str, app_name: str) -> None:
    client = ServeFleetClient.connect(address, app_name=app_name)
    out: dict[str, object] = {}
    chat = client.chat({"model": "tiny", "messages": PROMPT, "max_tokens": 8, "temperature": 0}, sticky_key="alice")
    assert isinstance(chat, ChatCompletion)
    out["chat_model"] = chat.model
    out["chat_text"] = chat.choices[0].message.content
    chunks = list(
        client.chat_stream({"model": "tiny", "messages": PROMPT, "max_tokens": 8, "temperature": 0}, sticky_key="alice")
    )
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    out["stream_text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    out["stream_models"] = sorted({c.model for c in chunks})
    pinned = client.completion({"model": "tiny", "prompt": "x = ", "max_tokens": 2}, variant="tiny-v2")
    assert isinstance(pinned, Completion)
    out["pinned_model"] = pinned.model
    out["sticky_models"] = sorted(
        {client.chat({"model": "tiny", "messages": PROMPT, "max_tokens": 1}, sticky_key="bob").model for _ in range(4)}
    )
    try:
        client.chat({"model": "tiny", "messages": [{"role": "user", "content": "word " * 2000}]})
    except ContextLengthExceeded as error:
        out["context_error"] = [type(error).__name__, error.param]
    try:
        client.chat({"model": "nope", "messages": PROMPT})
    except ModelNotFound as error:
        out["model_error"] = [type(error).__name__, error.status_code]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
