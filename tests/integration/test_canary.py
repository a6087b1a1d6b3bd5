"""A canary rollout on a real deployment: the candidate is made slow (the SIMULATED engine with a much larger
step time), the driver sees its p95 TTFT breach the guard and rolls it back on its own; clients never fail.
Bounded: at most 90 s of load from 4 clients."""

from __future__ import annotations

import threading
import time

import httpx
from ray import serve

from serve_app.config import parse_config

PREFIX = "/canary"


def test_a_slow_candidate_is_rolled_back_automatically(running_app):
    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    sim = {"model": "builtin:tiny-v1", "backend": "sim", "num_cpus": 0, "engine": {"max_model_len": 1024}}
    config = parse_config(
        {
            "app_name": "canary",
            "server": {"port": running_app.config.server.port},
            "variants": [
                {"name": "stable", "weight": 100, **sim},
                {"name": "slow", "weight": 0, **sim, "sim": {"base_step_ms": 60.0}},
            ],
            "rollout": {
                "baseline": "stable",
                "candidate": "slow",
                "steps": [30, 60, 100],
                "step_seconds": 4,
                "guards": {"min_requests": 5, "max_p95_ttft_ratio": 1.5, "max_error_rate": 0.05},
            },
        }
    )
    url = f"{running_app.url}{PREFIX}"
    serve.run(build_app(config), name=config.app_name, route_prefix=PREFIX, blocking=False)
    stop = threading.Event()
    served: list[tuple[int, str]] = []
    threads: list[threading.Thread] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(500):
                if stop.is_set():
                    return
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": f"c{n} {i}"}],
                    "max_tokens": 8,
                    "stream": True,
                }
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    response.read()
                    served.append((response.status_code, response.headers.get("x-servefleet-variant", "")))

    try:
        wait_ready(url, timeout_s=300)
        driver = serve.get_deployment_handle("rollout", app_name=config.app_name)
        threads += [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        status = driver.status.remote().result(timeout_s=10)
        while status["phase"] == "ramping" and time.monotonic() < deadline:
            time.sleep(1)
            status = driver.status.remote().result(timeout_s=10)
        assert status["phase"] == "rolled_back", status
        assert "p95 TTFT" in status["last_decision"]
        assert driver.weights.remote().result(timeout_s=10) == {"stable": 100.0, "slow": 0.0}
        time.sleep(3)  # routers follow within a second or two
        before = len(served)
        time.sleep(3)
        after_rollback = served[before:]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        serve.delete(config.app_name)
    assert [code for code, _ in served if code != 200] == []
    assert any(variant == "slow" for _, variant in served), "the candidate never got traffic"
    assert after_rollback and all(variant == "stable" for _, variant in after_rollback)
