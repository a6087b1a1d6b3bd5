"""Canary rollouts on a real deployment, with candidates made to break in the two ways the guards watch (the
SIMULATED engine: a much larger step time, or injected engine faults). Each time the driver sees the guard
breached and rolls the candidate back on its own, and clients saw failures only from the candidate, i.e. within
the canary's share. Bounded: at most 90 s of load from 4 clients per scenario."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from ray import serve

from serve_app.config import parse_config
from serve_app.control import blocking_handle

PREFIX = "/canary"
SIM = {"model": "builtin:tiny-v1", "backend": "sim", "num_cpus": 0, "engine": {"max_model_len": 1024}}


@dataclass(frozen=True)
class Served:
    status: int
    variant: str
    retry_after: str | None


@dataclass(frozen=True)
class RolloutRun:
    status: dict[str, Any]  # the driver's status once the ramp ended
    weights: dict[str, float]
    served: list[Served]  # every request, in completion order
    after_rollback: list[Served]  # requests that completed once routers had followed the rollback
    admin_status: dict[str, Any]  # GET /admin/status at the end, as an operator would look


def run_rollout(running_app: Any, candidate_sim: dict[str, Any], steps: list[float]) -> RolloutRun:
    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    config = parse_config(
        {
            "app_name": "canary",
            "server": {"port": running_app.config.server.port},
            "variants": [
                {"name": "stable", "weight": 100, **SIM},
                {"name": "candidate", "weight": 0, **SIM, "sim": candidate_sim},
            ],
            "rollout": {
                "baseline": "stable",
                "candidate": "candidate",
                "steps": steps,
                "step_seconds": 4,
                "guards": {"min_requests": 5, "max_p95_ttft_ratio": 1.5, "max_error_rate": 0.05},
            },
        }
    )
    url = f"{running_app.url}{PREFIX}"
    serve.run(build_app(config), name=config.app_name, route_prefix=PREFIX, blocking=False)
    stop = threading.Event()
    served: list[Served] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(500):
                if stop.is_set():
                    return
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": f"c{n} {i}"}],
                    "max_tokens": 8,
                    "stream": n % 2 == 0,  # half the clients stream, half do not
                }
                with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    response.read()
                    variant = response.headers.get("x-servefleet-variant", "")
                    served.append(Served(response.status_code, variant, response.headers.get("retry-after")))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    try:
        wait_ready(url, timeout_s=300)
        driver = blocking_handle("rollout", config.app_name)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 90
        status = driver.status.remote().result(timeout_s=10)
        while status["phase"] == "ramping" and time.monotonic() < deadline:
            time.sleep(1)
            status = driver.status.remote().result(timeout_s=10)
        weights = driver.weights.remote().result(timeout_s=10)
        time.sleep(3)  # routers follow within a second or two
        before = len(served)
        time.sleep(3)
        after_rollback = served[before:]
        admin_status = httpx.get(f"{url}/admin/status", timeout=30).json()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        serve.delete(config.app_name)
    return RolloutRun(status, weights, served, after_rollback, admin_status)


def test_a_slow_candidate_is_rolled_back_automatically(running_app):
    run = run_rollout(running_app, {"base_step_ms": 60.0}, steps=[30, 60, 100])
    assert run.status["phase"] == "rolled_back", run.status
    assert "p95 TTFT" in run.status["last_decision"]
    assert run.weights == {"stable": 100.0, "candidate": 0.0}
    assert [s.status for s in run.served if s.status != 200] == []
    assert any(s.variant == "candidate" for s in run.served), "the candidate never got traffic"
    assert run.after_rollback and all(s.variant == "stable" for s in run.after_rollback)
    assert run.admin_status["rollout"]["phase"] == "rolled_back"
    assert {v["name"]: v["weight"] for v in run.admin_status["variants"]} == {"stable": 100.0, "candidate": 0.0}


def test_a_failing_candidate_is_rolled_back_and_clients_saw_errors_only_within_its_share(running_app):
    run = run_rollout(running_app, {"error_rate": 1.0}, steps=[10, 50, 100])
    assert run.status["phase"] == "rolled_back", run.status
    assert "error" in run.status["last_decision"]
    assert run.weights == {"stable": 100.0, "candidate": 0.0}
    failed = [s for s in run.served if s.status != 200]
    print(
        f"\n[canary] failing candidate: {len(failed)} of {len(run.served)} requests failed, "
        f"decision: {run.status['last_decision']}"
    )
    assert failed, "the candidate never got traffic"
    # Every failure came from the candidate, as a retryable 503: none leaked into the baseline's share.
    assert {(s.status, s.variant, s.retry_after) for s in failed} == {(503, "candidate", "1")}
    assert all(s.status == 200 for s in run.served if s.variant == "stable")
    # It was rolled back at its first step: failures stay within that 10 % share (plus sampling slack).
    assert len(failed) <= max(4, 0.2 * len(run.served))
    assert run.after_rollback and all(s == Served(200, "stable", None) for s in run.after_rollback)
