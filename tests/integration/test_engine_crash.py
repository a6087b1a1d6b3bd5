"""An engine that crashes inside vLLM, under load: the engine core process of one of two REAL vLLM engine
replicas is SIGKILLed (as a segfault or an out-of-memory kill would end it). Only requests in flight on that
engine may fail: streams already under way end with a retryable `service_unavailable` event, while
non-streaming requests and streams that had sent nothing yet are retried once on the other replica. Nothing
hangs; the replica whose engine died exits and Serve replaces it, so the pool is back to two working engines.
Bounded: 4 clients, about 12 s of load, 300 s for recovery."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import httpx
import psutil
from ray import serve

from serve_app.config import load_config, parse_config
from tests.integration.conftest import stream_outcome

PREFIX = "/crash"
APP = "crash"
MSG = [{"role": "user", "content": "Tell me about rivers."}]


def engine_replicas() -> dict[int, int]:
    """{engine replica pid: its vLLM engine core pid} for this app's replicas whose engine core runs."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        if " ".join(process.info["cmdline"] or []).startswith(f"ray::ServeReplica:{APP}:engine-"):
            cores = [
                child.pid
                for child in process.children(recursive=True)
                if "EngineCore" in " ".join(child.cmdline() or [child.name()])
            ]
            if cores:
                found[process.pid] = cores[0]
    return found


def test_an_engine_crash_inside_vllm_fails_only_its_requests_in_flight(running_app):
    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    # The default config's tiny-v1, as two replicas (half a CPU each, so they fit beside the session's app).
    variant = next(v for v in load_config().model_dump()["variants"] if v["name"] == "tiny-v1")
    variant.update(name="crash-v1", weight=100, replicas=2, num_cpus=0.5)
    config = parse_config({"app_name": APP, "server": {"port": running_app.config.server.port}, "variants": [variant]})
    url = f"{running_app.url}{PREFIX}"
    serve.run(build_app(config), name=APP, route_prefix=PREFIX, blocking=False)
    stop = threading.Event()
    plain: list[tuple[int, str | None]] = []
    streamed: list[str] = []
    threads: list[threading.Thread] = []

    def client(n: int, stream: bool) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(200):
                if stop.is_set():
                    return
                body = {"model": "tiny", "messages": MSG, "max_tokens": 24, "temperature": 0}
                if not stream:
                    response = http.post("/v1/chat/completions", json=body)
                    plain.append((response.status_code, response.headers.get("retry-after")))
                    continue
                with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                    streamed.append(stream_outcome(response.status_code, response.read().decode()))

    try:
        wait_ready(url, timeout_s=600)
        deadline = time.monotonic() + 120
        while len(before := engine_replicas()) < 2:
            assert time.monotonic() < deadline, "the two engine replicas never came up"
            time.sleep(1)
        threads += [threading.Thread(target=client, args=(n, n % 2 == 0)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(4)
        victim_replica, victim_core = next(iter(before.items()))
        served_before = len(plain) + len(streamed)
        os.kill(victim_core, signal.SIGKILL)
        time.sleep(8)
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
        assert not any(thread.is_alive() for thread in threads), "a client hung"
        outcomes = Counter([f"plain {code}" for code, _ in plain] + [f"stream {s}" for s in streamed])
        print(f"\n[engine crash] {served_before} requests before the kill; all outcomes: {dict(outcomes)}")
        assert served_before > 0 and len(plain) + len(streamed) > served_before, "no load around the crash"
        # Non-streaming requests and streams that had sent nothing yet were retried on the other replica;
        # only streams already under way on the crashed engine may fail, each with a retryable error.
        assert all(code == 200 for code, _ in plain), plain
        assert all(s in ("ok", "retryable") for s in streamed), streamed
        assert sum(s != "ok" for s in streamed) <= 2, outcomes  # two streaming clients

        # The replica whose engine died has exited; Serve starts another, and both engines serve again.
        deadline = time.monotonic() + 300
        while True:
            after = engine_replicas()
            if victim_replica not in after and len(after) == 2:
                break
            assert time.monotonic() < deadline, f"the pool did not recover: {after}"
            time.sleep(2)
        assert not psutil.pid_exists(victim_replica), "the replica with a dead engine is still running"
        wait_ready(url, timeout_s=300)
        with httpx.Client(base_url=url, timeout=60) as http:
            answers = [http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 4})]
            answers += [http.post("/v1/chat/completions", json={"model": "tiny", "messages": MSG, "max_tokens": 4})]
        assert [a.status_code for a in answers] == [200, 200]
    finally:
        stop.set()
        serve.delete(APP)
