"""The app's metrics as operators see them: a real Prometheus server (Debian's ``prometheus``), started here on
loopback, scrapes the session cluster's Ray metrics agent; the test asks Prometheus's HTTP API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

MSG = [{"role": "user", "content": "Say something."}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(running_app, tmp_path_factory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus binary is missing: scripts/setup.sh installs Debian's prometheus package")
    folder = Path(tmp_path_factory.mktemp("prometheus"))
    config = folder / "prometheus.yml"
    config.write_text(
        # The scrape timeout cannot exceed the interval. One second left no slack for Ray's metrics agent on a
        # loaded machine late in the suite, and a scrape that times out records nothing; on failure the test
        # reports the targets' last errors and scrape durations.
        "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s}\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{running_app.metrics_port}']}}]\n"
    )
    port = _free_port()
    log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - closed after the process
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for(prometheus: str, promql: str, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(prometheus, promql)
        if result:
            return result
        time.sleep(1)
    targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    health = [(t["scrapeUrl"], t["health"], t["lastError"], t["lastScrapeDuration"]) for t in targets]
    names = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10).json()["data"]
    ours = [name for name in names if name.startswith("ray_servefleet")]
    pytest.fail(f"no data for {promql!r} within {timeout_s:.0f}s; targets {health}; servefleet metrics {ours}")


def test_request_engine_and_routing_metrics_reach_prometheus(running_app, http, prometheus):
    for variant in ("tiny-v1", "tiny-v2"):
        # Long enough that vLLM reports its gauges during a few of Ray's report intervals.
        body = {"model": "tiny", "messages": MSG, "max_tokens": 64, "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=body, headers={"x-servefleet-variant": variant}) as r:
            assert r.status_code == 200
            r.read()
        bad = http.post("/v1/chat/completions", json={"model": "tiny", "messages": []})
        assert bad.status_code == 400

    ok = wait_for(prometheus, 'sum by (variant) (ray_servefleet_requests_total{status="200"})')
    assert {series["metric"]["variant"] for series in ok} >= {"tiny-v1", "tiny-v2"}
    wait_for(prometheus, 'ray_servefleet_requests_total{status="400"}')
    ttft = wait_for(prometheus, "sum by (variant) (ray_servefleet_time_to_first_token_seconds_count)")
    assert all(float(series["value"][1]) >= 1 for series in ttft)
    wait_for(prometheus, "ray_servefleet_inter_token_latency_seconds_bucket")
    wait_for(prometheus, 'ray_servefleet_routing_decisions_total{reason="override"}')
    wait_for(prometheus, "ray_servefleet_variant_weight_percent")
    # vLLM's own engine metrics, through its Ray stat logger, beside ours. Its counters and histograms are
    # checked: vLLM sets its gauges (waiting requests, KV-cache use) only while it has work, and Ray 2.60
    # exports a gauge only in the report interval it was set in, so whether a scrape catches one is timing.
    wait_for(prometheus, "ray_vllm_time_to_first_token_seconds_count")
    # The engines' load as the app exports it: read from each engine replica at every export, so the series
    # are continuous even while idle (then 0), unlike vLLM's gauges above.
    for name in ("requests_waiting", "requests_running", "kv_cache_usage"):
        load = wait_for(prometheus, f"max by (variant) (ray_servefleet_engine_{name})")
        assert {series["metric"]["variant"] for series in load} >= {"tiny-v1", "tiny-v2"}
    # Nothing is in flight now: the series read 0 (a comparison returns no result while it is false).
    wait_for(prometheus, "max(ray_servefleet_engine_requests_running) == 0", timeout_s=30)
    generated = wait_for(prometheus, "sum(ray_vllm_generation_tokens_total)")
    assert float(generated[0]["value"][1]) > 0
