"""A local Ray cluster on loopback that this project starts, and stops exactly what it started.

The head runs as ``ray start --head --block`` in a process group of its own; ``stop`` signals that group, so
the GCS, the raylet, every worker and every vLLM process below them go, and nothing else on the machine is
touched (no ``ray stop``, which would kill every Ray process on the host).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from cluster import haproxy
from deployments.cpu_affinity import born_on, serving_cpus
from serve_app.paths import cache_dir, logs_dir, state_dir

logger = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


def ray_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every Ray process of ours starts with (see FACTS.md for why each is set)."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            # No usage reports, and no probing of cloud metadata addresses from a closed machine.
            "RAY_USAGE_STATS_ENABLED": "0",
            # A token file left by any earlier ray.init() would silently switch this cluster to token auth.
            "RAY_AUTH_MODE": "disabled",
            # Ray starts workers at nice 15; engines then lose the CPU to anything else on the box.
            "RAY_worker_niceness": "0",
            "SERVEFLEET_CACHE": str(cache_dir()),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_HOST_IP": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("RAY_TMPDIR", str(ray_temp_dir()))
    # Ray Serve runs each replica's user code, and the router of its outgoing handle calls, on event loops of
    # their own threads by default; every call then crosses threads, which on a busy core means waiting for
    # the OS to schedule each one. On the main loop, the ingress and engine replica took 10 to 15% less CPU per
    # request and p50 TTFT at 64 streams fell by half here (README: Performance). Ray's own throughput preset
    # sets the same two; later Ray releases make them the default. An operator's own setting wins.
    env.setdefault("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "0")
    env.setdefault("RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", "0")
    # Make the project importable by every worker, wherever Ray starts it.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def export_frontend_environment(state: ClusterState) -> None:
    """Give this process the cluster's frontend settings before it deploys: Ray Serve reads them wherever it
    is imported, the deploying driver included."""
    if state.frontend == "haproxy":
        os.environ.update(haproxy.environment(state.temp_dir))


def ray_temp_dir() -> Path:
    """Ray's temp dir holds unix sockets whose paths must stay under ~107 bytes, so it cannot live in a deep
    checkout; a short folder under the system temp dir, keyed by the cache folder, keeps runs apart."""
    key = hashlib.blake2b(str(cache_dir()).encode(), digest_size=4).hexdigest()
    path = Path(tempfile.gettempdir()) / f"sf-ray-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ClusterState:
    pid: int
    address: str
    node_ip: str
    port: int
    dashboard_port: int
    temp_dir: str
    log_file: str
    started_at: float
    metrics_port: int | None = None  # Ray's metrics agent: Prometheus scrapes every app metric here
    frontend: str = "ray-proxy"  # server.frontend the cluster was started for; fixed for its lifetime
    serving_cpus: list[int] | None = None  # where Ray's processes run (the engines' CPUs left out); None: anywhere


def _state_path() -> Path:
    return state_dir() / STATE_FILE


def read_state() -> ClusterState | None:
    path = _state_path()
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    # Reap it if it is our own child that has exited, so a zombie does not read as alive.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_cluster() -> ClusterState | None:
    """The cluster this project started, if it is still up; a stale state file is removed."""
    state = read_state()
    if state is None:
        return None
    if _alive(state.pid) and _port_open(state.node_ip, state.port):
        return state
    _state_path().unlink(missing_ok=True)
    return None


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_head(
    *,
    node_ip: str = "127.0.0.1",
    port: int = 6390,
    dashboard_port: int = 8265,
    metrics_port: int = 8080,
    num_cpus: int | None = None,
    frontend: str = "ray-proxy",
    engine_cpus: Iterable[int] = (),
    timeout_s: float = 60,
) -> ClusterState:
    """Start a Ray head on loopback and wait until its GCS answers. ``frontend="haproxy"`` starts it with Ray
    Serve's HAProxy mode (cluster/haproxy.py), which Ray reads only when its processes start. Every process of the
    cluster inherits the head's CPU mask: this process's CPUs less ``engine_cpus`` (the config's
    ``engine.cpu_affinity``), on which the engine replicas start vLLM's processes (deployments/cpu_affinity.py)."""
    existing = running_cluster()
    if existing is not None:
        return existing
    if _port_open(node_ip, port):
        raise RuntimeError(f"port {node_ip}:{port} is taken by something this project did not start")
    env = ray_environment()
    temp_dir = env["RAY_TMPDIR"]
    serving = serving_cpus(engine_cpus, os.sched_getaffinity(0))
    if frontend == "haproxy":
        env.update(haproxy.prepare(temp_dir))
    log_file = logs_dir() / "ray-head.log"
    # Logical CPUs: engines reserve them for placement; light deployments reserve none. At least 4, so the
    # two built-in engines and a spare replica fit on a 2-core machine (vLLM's threads, not Ray, use the cores).
    cpus = num_cpus if num_cpus is not None else max(4, os.cpu_count() or 1)
    command = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--block",
        f"--node-ip-address={node_ip}",
        f"--port={port}",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp_dir}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        # A fixed port, so that a Prometheus config can name it (Ray picks a random one otherwise).
        f"--metrics-export-port={metrics_port}",
        "--disable-usage-stats",
    ]
    with open(log_file, "ab") as log, born_on(serving):
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cache_dir()
        )
    state = ClusterState(
        pid=process.pid,
        address=f"{node_ip}:{port}",
        node_ip=node_ip,
        port=port,
        dashboard_port=dashboard_port,
        temp_dir=temp_dir,
        log_file=str(log_file),
        started_at=time.time(),
        metrics_port=metrics_port,
        frontend=frontend,
        serving_cpus=sorted(serving) if serving else None,
    )
    deadline = time.monotonic() + timeout_s
    while not _port_open(node_ip, port):
        if process.poll() is not None:
            raise RuntimeError(f"ray head exited with code {process.returncode}; see {log_file}")
        if time.monotonic() > deadline:
            _kill_group(process.pid)
            raise RuntimeError(f"ray head did not come up in {timeout_s:.0f}s; see {log_file}")
        time.sleep(0.5)
    _state_path().write_text(json.dumps(asdict(state), indent=2))
    return state


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def live_group_members(pgid: int) -> list[int]:
    """Processes still running in a process group. Zombies do not count: in a container whose init does
    not reap orphans they linger after death, and ``killpg(pgid, 0)`` would still find them."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _wait_group(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while live_group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def stop(timeout_s: float = 10) -> bool:
    """Stop the cluster this project started: its whole process group. Returns False if none was running."""
    state = read_state()
    if state is None:
        return False
    # Reap the head if it is our own child (foreground `up`), so it does not linger as a zombie.
    _alive(state.pid)
    _kill_group(state.pid, signal.SIGTERM)
    if not _wait_group(state.pid, timeout_s):
        # Whatever ignored SIGTERM (a stuck worker, an engine subprocess) goes now.
        _kill_group(state.pid, signal.SIGKILL)
        _wait_group(state.pid, 10)
    if state.frontend == "haproxy":
        haproxy.kill(state.temp_dir)
    _state_path().unlink(missing_ok=True)
    return True
