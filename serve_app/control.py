"""Deploy to and inspect a running Ray cluster. I/O only; the CLI decides what to print."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from serve_app.config import ServeFleetConfig

logger = logging.getLogger(__name__)


def connect(address: str, *, node_ip: str | None = None) -> None:
    """Join the cluster at ``address`` as a driver. ``node_ip``: the address this machine's raylets bind to,
    when it is not the one Ray would guess (the multi-node cluster's 127.0.0.2)."""
    import ray

    if ray.is_initialized():
        return
    options: dict[str, Any] = {"_node_ip_address": node_ip} if node_ip else {}
    ray.init(address=address, namespace="servefleet", log_to_driver=False, logging_level=logging.WARNING, **options)


def blocking_handle(deployment: str, app_name: str) -> Any:
    """A handle to ``deployment`` for code without a running event loop (``.remote().result()``)."""
    from ray import serve

    return router_on_own_loop(serve.get_deployment_handle(deployment, app_name=app_name))


def router_on_own_loop(handle: Any) -> Any:
    """``handle`` with Serve's router on a loop of its own, whatever this process inherited, so that blocking
    code can use it. The cluster's processes run with RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0
    (cluster/local.py), which makes a handle usable only inside a running loop; a driver started from the same
    environment would get such a handle. Ray's proxy initialises its own handles this way."""
    if not handle.is_initialized:
        handle._init(_run_router_in_separate_loop=True)
    return handle


def deploy(config: ServeFleetConfig, *, proxy_location: str | None = None) -> None:
    """Start Serve's HTTP proxy on the configured address and deploy (or update) the app.

    ``proxy_location="HeadOnly"`` for several nodes on one machine: Serve's default starts a proxy on every
    node, and they would all try to bind the same host and port.
    """
    from ray import serve

    from serve_app.builder import build_app

    serve.start(
        http_options={
            "host": config.server.host,
            "port": config.server.port,
            "request_timeout_s": config.server.request_timeout_s,
        },
        **({"proxy_location": proxy_location} if proxy_location else {}),
    )
    serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)


def base_url(config: ServeFleetConfig) -> str:
    host = config.server.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{config.server.port}"


def wait_ready(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``/readyz`` until every variant's engine pool answers."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            last = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else response.text
            )
            if response.status_code == 200:
                return dict(last)
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(1)
    raise TimeoutError(f"not ready after {timeout_s:.0f}s; last answer from {url}/readyz: {last}")


@dataclass
class DeploymentStatus:
    name: str
    status: str
    replicas: dict[str, int] = field(default_factory=dict)
    message: str = ""


@dataclass
class AppStatus:
    name: str
    status: str
    deployments: list[DeploymentStatus]
    message: str = ""


def app_status(app_name: str) -> AppStatus | None:
    from ray import serve

    applications = serve.status().applications
    if app_name not in applications:
        return None
    app = applications[app_name]
    deployments = [
        DeploymentStatus(
            name=name,
            status=str(getattr(d.status, "value", d.status)),
            replicas={str(getattr(k, "value", k)): v for k, v in d.replica_states.items()},
            message=d.message,
        )
        for name, d in app.deployments.items()
    ]
    return AppStatus(app_name, str(getattr(app.status, "value", app.status)), deployments, app.message)


def delete(app_name: str) -> None:
    from ray import serve

    serve.delete(app_name)
