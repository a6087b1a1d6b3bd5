"""The engine replica against the real vLLM engine: client disconnects abort, and greedy output equals
Hugging Face's own ``generate`` on the same model."""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app import model_builder
from serve_app.control import blocking_handle


def engine_running(app_name: str, variant: str) -> int:
    handle = blocking_handle(f"engine-{variant}", app_name)
    return handle.stats.remote().result().running_requests


def test_client_disconnect_aborts_the_engine_request(running_app):
    app_name = running_app.config.app_name
    body = {
        "model": "tiny-v2",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1000,  # many seconds of work if nobody stops it
        "stream": True,
    }
    with (
        httpx.Client(base_url=running_app.url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert engine_running(app_name, "tiny-v2") == 1
    # The connection is closed here, mid-stream.
    closed = time.monotonic()
    deadline = closed + 5
    while engine_running(app_name, "tiny-v2") != 0:
        assert time.monotonic() < deadline, "the engine kept generating for a client that left"
        time.sleep(0.1)
    print(f"engine request aborted {time.monotonic() - closed:.2f}s after the client left")


@pytest.mark.parametrize("variant", ["tiny-v1", "tiny-v2"])
def test_greedy_tokens_equal_hugging_face_generate(openai_client, variant):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_builder.builtin_model_path(variant)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for prompt in ("import numpy as np\n", "def main():\n    "):
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
        expected = tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
        served = openai_client.completions.create(model=variant, prompt=prompt, max_tokens=24, temperature=0)
        assert served.choices[0].text == expected
        assert served.usage.completion_tokens == 24
