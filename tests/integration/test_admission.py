"""Admission control on a real deployment: when a variant's engine queue is over the threshold, a key already
holding the in-flight work gets 429 with Retry-After, while another key still gets in. The engine is the
SIMULATED one with a batch of 2, so saturation is reached with a handful of streams. Bounded: 8 flood clients,
at most 15 s."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
from ray import serve

from serve_app.auth import hash_token
from serve_app.config import parse_config

FLOOD = "sf-flood-" + "f" * 40
CALM = "sf-calm-" + "c" * 40
PREFIX = "/admission"


def test_saturated_pool_refuses_the_heavy_key_with_retry_after_and_admits_another(running_app, tmp_path: Path):
    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - {{name: flood, key_hash: '{hash_token(FLOOD)}', variants: ['*']}}\n"
        f"  - {{name: calm, key_hash: '{hash_token(CALM)}', variants: ['*']}}\n"
    )
    os.chmod(keys, 0o600)
    config = parse_config(
        {
            "app_name": "admission",
            "server": {"port": running_app.config.server.port},
            "variants": [
                {
                    "name": "small",
                    "weight": 100,
                    "model": "builtin:tiny-v1",
                    "backend": "sim",
                    "num_cpus": 0,
                    "engine": {"max_model_len": 1024},
                    "sim": {"max_num_seqs": 2, "base_step_ms": 20.0},
                }
            ],
            "auth": {"enabled": True, "keys_file": str(keys)},
            "admission": {"max_waiting": 2},
        }
    )
    url = f"{running_app.url}{PREFIX}"
    serve.run(build_app(config), name=config.app_name, route_prefix=PREFIX, blocking=False)
    stop = threading.Event()
    flood: list[tuple[int, str | None]] = []
    threads: list[threading.Thread] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(200):
                if stop.is_set():
                    return
                body = {"model": "tiny", "messages": [{"role": "user", "content": f"{n} {i}"}], "max_tokens": 32}
                with http.stream(
                    "POST",
                    "/v1/chat/completions",
                    json={**body, "stream": True},
                    headers={"authorization": f"Bearer {FLOOD}"},
                ) as response:
                    response.read()
                    flood.append((response.status_code, response.headers.get("retry-after")))
                if response.status_code == 429:
                    time.sleep(0.2)

    try:
        wait_ready(url, timeout_s=300)
        threads += [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 15
        while not any(code == 429 for code, _ in flood) and time.monotonic() < deadline:
            time.sleep(0.2)
        calm = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={"authorization": f"Bearer {CALM}"},
            timeout=60,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        serve.delete(config.app_name)
    refused = [retry for code, retry in flood if code == 429]
    assert refused, f"no 429 in {len(flood)} flood requests"
    assert all(retry is not None and int(retry) >= 1 for retry in refused)
    assert {code for code, _ in flood} <= {200, 429}  # refused or served, never failed
    assert any(code == 200 for code, _ in flood)
    assert calm.status_code == 200, calm.text
