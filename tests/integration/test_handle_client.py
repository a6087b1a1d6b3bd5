"""Python callers in another Ray job reach the same graph through a deployment handle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cluster.local import ray_environment


def test_handle_calls_from_a_separate_driver_process(running_app, http):
    driver = Path(__file__).with_name("handle_driver.py")
    result = subprocess.run(
        [sys.executable, str(driver), running_app.address, running_app.config.app_name],
        capture_output=True,
        text=True,
        timeout=180,
        env=ray_environment(dict(os.environ)),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    # Same routing as HTTP: the sticky key lands where the header sends it, and the text is the same.
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "def fibonacci(n):"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    over_http = http.post("/v1/chat/completions", json=body, headers={"x-servefleet-user": "alice"}).json()
    assert seen["chat_model"] == over_http["model"]
    assert seen["chat_text"] == over_http["choices"][0]["message"]["content"]
    assert seen["stream_text"] == seen["chat_text"]
    assert seen["stream_models"] == [seen["chat_model"]]
    assert seen["pinned_model"] == "tiny-v2"
    assert len(seen["sticky_models"]) == 1
    assert seen["context_error"] == ["ContextLengthExceeded", "messages"]
    assert seen["model_error"] == ["ModelNotFound", 404]
