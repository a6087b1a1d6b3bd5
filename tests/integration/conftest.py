"""One real Ray cluster and one real deployment of the graph (real vLLM on the built-in tiny models) per
test session, shared by every integration test."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from serve_app.config import ServeFleetConfig, load_config

pytestmark = pytest.mark.integration


def stream_outcome(status: int, body: str) -> str:
    """How a streamed request ended, as the fault tests count it: ``ok``, ``retryable`` (an error event saying
    the service is unavailable), ``status N`` (refused before the stream started), or the body's tail."""
    if status != 200:
        return f"status {status}"
    if '"error"' in body:
        return "retryable" if "service_unavailable" in body else body[-300:]
    return "ok"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningApp:
    config: ServeFleetConfig
    url: str
    address: str  # the Ray GCS address, for drivers in other processes
    metrics_port: int  # Ray's metrics agent, where Prometheus scrapes every replica's metrics


# Package scope: the cluster (two vLLM engines and the extra apps the tests deploy on it) goes away when the
# last integration test ends, rather than loading the machine under the multi-node tests that run after it.
@pytest.fixture(scope="package")
def running_app() -> Iterator[RunningApp]:
    from cluster import haproxy
    from cluster.local import ray_environment

    os.environ.update(ray_environment())
    saved = dict(os.environ)
    # Replicas push their metrics to the agent every second instead of every ten, so scrapes see them soon.
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112 - Ray reads this exact name
    import ray
    from ray import serve

    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    port = free_port()
    metrics_port = free_port()
    config = load_config(overrides={"server": {"port": port}, "app_name": "servefleet-test"})
    # The frontend `servefleet up` gives this config (HAProxy for the default), set before Ray starts its processes.
    frontend = config.frontends()[0]
    temp_dir = os.environ["RAY_TMPDIR"]
    if frontend == "haproxy":
        os.environ.update(haproxy.prepare(temp_dir))
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        namespace="servefleet",
        logging_level="WARNING",
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        started = time.monotonic()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=600)
        print(f"\n[integration] graph ready in {time.monotonic() - started:.1f}s at {url} (frontend {frontend})")
        address = ray.get_runtime_context().gcs_address
        yield RunningApp(config=config, url=url, address=address, metrics_port=metrics_port)
    finally:
        serve.shutdown()
        ray.shutdown()
        haproxy.kill(temp_dir)  # Ray starts it outside the processes that ray.shutdown stops
        # The clusters that later test packages start take their settings from this environment.
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="package")
def http(running_app: RunningApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running_app.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="package")
def openai_client(running_app: RunningApp):
    from openai import OpenAI

    return OpenAI(base_url=f"{running_app.url}/v1", api_key="unused", max_retries=0, timeout=120)
