"""Killing an engine replica's process under load: non-streaming requests are retried once on the surviving
replica (clients see no failure), streams that were on the dead replica end with a retryable error, nothing
hangs, and Serve brings the pool back to full size. The engine is the SIMULATED one (two replicas), so the
kill and the recovery take seconds. Bounded: 6 clients, at most 20 s of load, 120 s for recovery."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil
from ray import serve

from serve_app.config import parse_config
from tests.integration.conftest import stream_outcome

PREFIX = "/faults"


def _engine_replica_pids() -> list[int]:
    # Ray titles each replica's process "ray::ServeReplica:<app>:<deployment>..." (the state API needs the
    # dashboard, which the test cluster does not run).
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("ray::ServeReplica:faults:engine-sim"):
            pids.append(process.pid)
    return sorted(pids)


def test_killing_an_engine_replica_loses_no_non_streaming_request(running_app):
    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    config = parse_config(
        {
            "app_name": "faults",
            "server": {"port": running_app.config.server.port},
            "variants": [
                {
                    "name": "sim",
                    "weight": 100,
                    "model": "builtin:tiny-v1",
                    "backend": "sim",
                    "num_cpus": 0,
                    "replicas": 2,
                    "engine": {"max_model_len": 1024},
                    "sim": {"base_step_ms": 10.0},
                }
            ],
        }
    )
    url = f"{running_app.url}{PREFIX}"
    serve.run(build_app(config), name=config.app_name, route_prefix=PREFIX, blocking=False)
    stop = threading.Event()
    plain: list[int] = []
    streamed: list[str] = []
    failures: list[str] = []
    threads: list[threading.Thread] = []

    def client(n: int, stream: bool) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(500):
                if stop.is_set():
                    return
                body = {"model": "tiny", "messages": [{"role": "user", "content": f"{n} {i}"}], "max_tokens": 24}
                if not stream:
                    response = http.post("/v1/chat/completions", json=body)
                    plain.append(response.status_code)
                    if response.status_code != 200:
                        failures.append(response.text[:300])
                    continue
                with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                    streamed.append(stream_outcome(response.status_code, response.read().decode()))

    try:
        wait_ready(url, timeout_s=300)
        deadline = time.monotonic() + 60
        while len(_engine_replica_pids()) < 2:
            assert time.monotonic() < deadline, "the two engine replicas never came up"
            time.sleep(0.5)
        threads += [threading.Thread(target=client, args=(n, n % 3 == 0)) for n in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(4)
        victim = _engine_replica_pids()[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(8)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    try:
        assert not any(thread.is_alive() for thread in threads), "a client hung"
        assert len(plain) > 20
        assert all(code == 200 for code in plain), (len(plain), failures)
        assert "ok" in streamed
        assert all(outcome in ("ok", "retryable", "status 503") for outcome in streamed), streamed
        deadline = time.monotonic() + 120
        while len([pid for pid in _engine_replica_pids() if pid != victim]) < 2:
            assert time.monotonic() < deadline, "the pool did not return to two replicas"
            time.sleep(1)
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "after"}], "max_tokens": 4},
            timeout=30,
        )
        assert answer.status_code == 200
    finally:
        serve.delete(config.app_name)
