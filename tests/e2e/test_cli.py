"""The README's serve path as a user runs it: `servefleet up --detach`, `status`, requests, `deploy`,
`rollback`, `down`, with the default frontend (Ray Serve's HAProxy mode on this single-node cluster).

Runs in its own cache folder (its own models, Ray temp dir and state file) and on its own ports, before the
integration tests' shared cluster starts (pytest collects tests/e2e first), so the two never overlap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from cluster import haproxy
from cluster.local import live_group_members
from loadtests.soak_memory import session_members

pytestmark = [pytest.mark.slow, pytest.mark.integration]


CPUS = os.sched_getaffinity(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def servefleet(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve_app", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def group_alive(pgid: int) -> bool:
    return bool(live_group_members(pgid))


def listening(pids: set[int]) -> dict[int, set[str]]:
    """Port -> the addresses these processes listen on."""
    ports: dict[int, set[str]] = {}
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids:
            ports.setdefault(connection.laddr.port, set()).add(connection.laddr.ip)
    return ports


def test_up_status_request_down(tmp_path: Path):
    cache = tmp_path / "cache"
    env = {**os.environ, "SERVEFLEET_CACHE": str(cache)}
    config = tmp_path / "one-variant.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "variants": [
                    {
                        "name": "tiny-v1",
                        "model": "builtin:tiny-v1",
                        "weight": 100,
                        # As the default config does on this CPU build: the engine on the first CPU, the rest of
                        # the cluster on the others.
                        "engine": {"max_model_len": 512, "dtype": "float32", "cpu_affinity": [min(CPUS)]},
                        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                    }
                ]
            }
        )
    )
    port, ray_port, dash_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    up = servefleet(
        "up",
        "--detach",
        "--config",
        str(config),
        "--port",
        str(port),
        "--ray-port",
        str(ray_port),
        "--dashboard-port",
        str(dash_port),
        "--metrics-port",
        str(metrics_port),
        env=env,
    )
    state_file = cache / "state" / "cluster.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pid = state.get("pid")
    temp_dir = state.get("temp_dir", "/nonexistent")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{port}/v1" in up.stdout
        assert "curl" in up.stdout
        assert (cache / "models" / "tiny-v1" / "model.safetensors").exists()

        # The default frontend here is Ray Serve's HAProxy: it holds the API port, and everything it listens
        # on (the API, its Prometheus exporter and its stats page) is on loopback only.
        assert state["frontend"] == "haproxy"
        ports = listening({p.pid for p in haproxy.processes(temp_dir)})
        assert port in ports and {9101, 8404} <= set(ports), ports
        assert all(addresses == {"127.0.0.1"} for addresses in ports.values()), ports

        # The engine's processes run on its CPU; Ray's, the serving path's and HAProxy's on the others.
        if len(CPUS) > 1:
            serving = sorted(CPUS - {min(CPUS)})
            assert state["serving_cpus"] == serving
            # Ray gives each worker a process group of its own; the head's session holds them all.
            members = [p for p in map(psutil.Process, session_members(pid)) if p.status() != psutil.STATUS_ZOMBIE]
            replica = next(p for p in members if "engine-tiny-v1" in " ".join(p.cmdline()))
            engine = replica.children(recursive=True)  # vLLM's engine core, its worker and their helpers
            assert engine and all(p.cpu_affinity() == [min(CPUS)] for p in engine), [
                (p.name(), p.cpu_affinity()) for p in engine
            ]
            rest = [p for p in members if p not in engine]
            assert all(p.cpu_affinity() == serving for p in rest), [(p.name(), p.cpu_affinity()) for p in rest]

        status = servefleet("status", "--config", str(config), "--port", str(port), env=env, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "engine-tiny-v1" in status.stdout and "HEALTHY" in status.stdout
        assert "running=1" in status.stdout and "(frontend haproxy)" in status.stdout

        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        assert reply.model == "tiny-v1"
        assert reply.usage.completion_tokens == 5

        # A changed config goes live with `deploy` (here the routing salt: new ingress replicas, which route,
        # the engine untouched), and `rollback` returns to the one `up` deployed.
        changed = tmp_path / "changed.yaml"
        data = yaml.safe_load(config.read_text())
        changed.write_text(yaml.safe_dump({**data, "server": {"port": port}, "routing": {"salt": "new"}}))
        deploy = servefleet("deploy", str(changed), env=env, timeout=600)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert "deployed" in deploy.stdout
        rollback = servefleet("rollback", env=env, timeout=600)
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
        assert "rolled back" in rollback.stdout
        again = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=3
        )
        assert again.usage.completion_tokens == 3
        nothing_left = servefleet("rollback", env=env, timeout=120)
        assert nothing_left.returncode == 1 and "nothing to roll back" in nothing_left.stderr

        # The frontend is fixed when the cluster starts: a config that names Ray's proxy is refused, not
        # half-applied.
        other = tmp_path / "ray-proxy.yaml"
        other.write_text(yaml.safe_dump({**data, "server": {"port": port, "frontend": "ray-proxy"}}))
        refused = servefleet("deploy", str(other), env=env, timeout=120)
        assert refused.returncode == 2 and "server.frontend" in refused.stderr
    finally:
        started = time.monotonic()
        down = servefleet("down", env=env, timeout=120)
        down_s = time.monotonic() - started
        if pid is not None and group_alive(pid):
            os.killpg(pid, signal.SIGKILL)  # never leave a cluster behind, even when the test failed
        left = haproxy.processes(temp_dir)
        for process in left:
            process.kill()
    assert down.returncode == 0 and "stopped" in down.stdout
    print(f"servefleet down took {down_s:.1f}s")
    assert pid is not None and not group_alive(pid), "servefleet down left processes of its cluster running"
    assert not state_file.exists()
    assert not left, "servefleet down left HAProxy running"
    again = servefleet("down", env=env, timeout=60)
    assert "no local cluster" in again.stdout


def test_bad_config_fails_before_anything_starts(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("variants:\n  - name: a\n    model: builtin:tiny-v1\n    weight: 90\n")
    env = {**os.environ, "SERVEFLEET_CACHE": str(tmp_path / "cache")}
    result = servefleet("up", "--config", str(config), env=env, timeout=60)
    assert result.returncode == 2
    assert "sum to 100" in result.stderr
    assert not (tmp_path / "cache" / "state" / "cluster.json").exists()
