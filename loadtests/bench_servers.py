"""The servers ``loadtests.bench`` compares, each a context manager that starts one, waits until it answers,
yields ``(base_url, served_model_name)`` and stops it (and everything it started) on exit.

- ``vllm``: vLLM's own OpenAI server, the reference.
- ``servefleet``: this stack as the default config runs it, the whole graph on a local Ray cluster behind
  Ray Serve's HAProxy mode (``server.frontend: auto``).
- ``servefleet-ray-proxy``: the same behind Ray Serve's Python proxy (``server.frontend: ray-proxy``).
- ``servefleet-hops``: the same with the router and preprocess as deployments of their own, a Ray hop each
  (``pools.route_and_prepare: deployments``).
- ``ray-serve-llm``: Ray's own ``ray.serve.llm.build_openai_app`` on the CPU.
- ``naive``: FastAPI around Hugging Face ``generate`` (``loadtests.naive_server``), what a user might write.

Every server gets the same model files, context length and batch size, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from serve_app.paths import logs_dir

# What vLLM needs on this CPU (FACTS.md), for the servers started here as plain processes.
VLLM_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, path: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{url}{path} not ready after {timeout_s:.0f}s")


@contextlib.contextmanager
def vllm_server(model_path: str, max_model_len: int, max_num_seqs: int) -> Iterator[tuple[str, str]]:
    """vLLM's own OpenAI server (the console script fails under vllm-cpu; the module works)."""
    port = free_port()
    env = {**os.environ, **VLLM_CPU_ENV}
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        "bench",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(max_num_seqs),
        "--disable-log-stats",
    ]
    with _process(command, env, "vllm", port) as url:
        yield url, "bench"


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], name: str, port: int) -> Iterator[str]:
    """Run a server as its own process group, wait for ``/health``, and kill the whole group on exit."""
    log = open(logs_dir() / f"bench-{name}.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, "/health", 300, process)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        log.close()


@contextlib.contextmanager
def servefleet_server(
    model: str,
    max_model_len: int,
    max_num_seqs: int,
    *,
    stream: dict[str, float] | None = None,
    frontend: str | None = None,
    ray_env: dict[str, str] | None = None,
    route_and_prepare: str | None = None,
) -> Iterator[tuple[str, str]]:
    """This stack: a local Ray cluster, the whole graph, one engine replica of the same model. ``stream``
    overrides the config's coalescing settings (``loadtests.cpu_split``), ``frontend`` its server.frontend,
    ``route_and_prepare`` its pools.route_and_prepare, and ``ray_env`` adds to the environment every Ray
    process of the cluster starts with."""
    from cluster import local
    from serve_app import control
    from serve_app.config import load_config, parse_config

    port = free_port()
    # The variant exactly as the default config serves it (engine args, CPU pinning, env), alone and at
    # 100% of the traffic, with the benchmark's batch size.
    base = load_config()
    variant = next(v for v in base.model_dump()["variants"] if v["name"] == "tiny-v1")
    variant.update(model=model, weight=100, max_ongoing_requests=max_num_seqs)
    variant["engine"].update(max_model_len=max_model_len, max_num_seqs=max_num_seqs)
    server = {"port": port, **({"frontend": frontend} if frontend else {})}
    raw: dict[str, Any] = {"app_name": "bench", "server": server, "variants": [variant]}
    if stream is not None:
        raw["stream"] = stream
    if route_and_prepare is not None:
        raw["pools"] = {"route_and_prepare": route_and_prepare}
    config = parse_config(raw)
    if local.running_cluster() is not None:
        raise RuntimeError("a servefleet cluster is already running; stop it first (servefleet down)")
    saved = dict(os.environ)
    os.environ.update(ray_env or {})
    try:
        state = local.start_head(
            port=free_port(),
            dashboard_port=free_port(),
            metrics_port=free_port(),
            frontend=config.frontends()[0],
            engine_cpus=config.engine_cpus(),
        )
        local.export_frontend_environment(state)
        control.connect(state.address)
        control.deploy(config)
        url = control.base_url(config)
        control.wait_ready(url, 300)
        yield url, "tiny"
    finally:
        import ray

        ray.shutdown()
        local.stop()
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def ray_serve_llm_server(model_path: str, max_model_len: int, max_num_seqs: int) -> Iterator[tuple[str, str]]:
    """Ray's own LLM serving app, configured as its docs show, on the CPU, with the same engine arguments."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from cluster import local
    from serve_app import control

    if local.running_cluster() is not None:
        raise RuntimeError("a servefleet cluster is already running; stop it first (servefleet down)")
    port = free_port()
    state = local.start_head(port=free_port(), dashboard_port=free_port(), metrics_port=free_port())
    try:
        control.connect(state.address)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = LLMConfig(
            model_loading_config={"model_id": "bench", "model_source": model_path},
            # A bundle without GPUs is how ray.serve.llm is told to run the engine on the CPU.
            placement_group_config={"bundles": [{"CPU": 1}]},
            engine_kwargs={
                "dtype": "float32",
                "enforce_eager": True,
                "max_model_len": max_model_len,
                "max_num_seqs": max_num_seqs,
            },
            runtime_env={"env_vars": VLLM_CPU_ENV},
            deployment_config={"num_replicas": 1, "max_ongoing_requests": max_num_seqs},
        )
        serve.run(build_openai_app({"llm_configs": [config]}), name="bench", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_http(url, "/v1/models", 600)
        yield url, "bench"
    finally:
        import ray

        ray.shutdown()
        local.stop()


@contextlib.contextmanager
def naive_server(model_path: str, max_model_len: int, max_num_seqs: int) -> Iterator[tuple[str, str]]:
    """FastAPI + transformers ``generate``; context length and batch size do not apply (it does not batch)."""
    port = free_port()
    command = [sys.executable, "-m", "loadtests.naive_server", "--model", model_path, "--port", str(port)]
    with _process(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, "naive", port) as url:
        yield url, "naive"


ServerFactory = Callable[[str, int, int], contextlib.AbstractContextManager[tuple[str, str]]]

TARGETS: dict[str, ServerFactory] = {
    "vllm": vllm_server,
    "servefleet": servefleet_server,
    "servefleet-ray-proxy": functools.partial(servefleet_server, frontend="ray-proxy"),
    "servefleet-hops": functools.partial(servefleet_server, route_and_prepare="deployments"),
    "ray-serve-llm": ray_serve_llm_server,
    "naive": naive_server,
}


def model_argument(target: str, model_path: str) -> Any:
    """This stack names the built-in model by its config name; the others take the built files."""
    return "builtin:tiny-v1" if target.startswith("servefleet") else model_path
