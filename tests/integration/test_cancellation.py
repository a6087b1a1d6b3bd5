"""A client that goes away mid-stream frees its engine slot: the engine request is aborted, and vLLM's count
of unfinished requests returns to zero long before the answer would have finished."""

from __future__ import annotations

import time

from serve_app.control import blocking_handle

VARIANT = "tiny-v1"


def _running(app_name: str) -> int:
    handle = blocking_handle(f"engine-{VARIANT}", app_name)
    return handle.stats.remote().result(timeout_s=10).running_requests


def test_disconnect_mid_stream_aborts_the_engine_request(running_app, http):
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 900,  # ~10 s of generation on this CPU: still running when the client leaves
        "stream": True,
    }
    headers = {"x-servefleet-variant": VARIANT}
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = 0
        for line in lines:
            received += line.startswith("data: ")
            if received >= 3:
                break
        assert _running(running_app.config.app_name) >= 1
    # Leaving the block closed the connection after three chunks of a 900-token answer.
    deadline = time.monotonic() + 15
    while _running(running_app.config.app_name) > 0:
        assert time.monotonic() < deadline, "the engine kept generating for a client that had gone"
        time.sleep(0.2)
