"""`server.frontend: haproxy` as a user runs it: `servefleet up --detach` with Ray Serve's HAProxy mode, the
openai client through HAProxy, bad input, a mismatched deploy refused, and `down` leaving no HAProxy behind.

Its own cache folder (so its own Ray temp dir and state file) and ports, like test_cli.py; the built-in models
are linked from the project's cache rather than rebuilt.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.e2e.test_cli import free_port, group_alive, servefleet

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def haproxy_processes(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "haproxy" and any(marker in arg for arg in cmdline):
            found.append(process)
    return found


def listener(port: int) -> str | None:
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return psutil.Process(connection.pid).name()
    return None


def test_haproxy_frontend_serves_the_openai_client_and_stops_cleanly(tmp_path: Path):
    from serve_app.model_builder import build_model

    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    built = build_model("tiny-v1")
    for entry in built.parent.iterdir():  # the model and the tokenizer it was trained with
        (cache / "models" / entry.name).symlink_to(entry)
    env = {**os.environ, "SERVEFLEET_CACHE": str(cache)}
    port = free_port()
    variant = {
        "name": "tiny-v1",
        "model": "builtin:tiny-v1",
        "weight": 100,
        "engine": {"max_model_len": 512, "dtype": "float32"},
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    }
    config = tmp_path / "haproxy.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": port, "frontend": "haproxy"}, "variants": [variant]}))
    ports = [str(free_port()) for _ in range(3)]
    up = servefleet(
        "up", "--detach", "--config", str(config), "--ray-port", ports[0], "--dashboard-port", ports[1],
        "--metrics-port", ports[2], env=env,
    )  # fmt: skip
    state_file = cache / "state" / "cluster.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    marker = str(Path(state.get("temp_dir", "/nonexistent")) / "haproxy") + os.sep
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert state["frontend"] == "haproxy"
        assert haproxy_processes(marker), "no HAProxy of this cluster is running"
        assert listener(port) == "haproxy"  # the API port is HAProxy's, not Serve's Python proxy's
        status = servefleet("status", "--config", str(config), env=env, timeout=120)
        assert status.returncode == 0 and "(frontend haproxy)" in status.stdout, status.stdout + status.stderr

        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5
        )
        assert reply.model == "tiny-v1" and reply.usage.completion_tokens == 5
        chunks = list(
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        completion = client.completions.create(model="tiny-v1", prompt="Once", max_tokens=4)
        assert completion.usage.completion_tokens == 4

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            answer = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [], "max_tokens": 2})
            assert answer.status_code == 400 and answer.json()["error"]["message"]
            unknown = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
            malformed = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
            assert malformed.status_code == 400
            ok = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
            assert ok.status_code == 200 and ok.headers["x-servefleet-variant"] == "tiny-v1"
            assert ok.headers["x-request-id"]
            assert http.get("/admin/status").status_code == 200  # admin routes still answer on loopback

        # The frontend is fixed when the cluster starts: a config for Ray's proxy is refused, not half-applied.
        other = tmp_path / "ray-proxy.yaml"
        other.write_text(yaml.safe_dump({"server": {"port": port}, "variants": [variant]}))
        refused = servefleet("deploy", str(other), env=env, timeout=120)
        assert refused.returncode == 2 and "server.frontend" in refused.stderr
    finally:
        down = servefleet("down", env=env, timeout=120)
        pid = state.get("pid")
        if pid is not None and group_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        for process in haproxy_processes(marker):
            process.kill()
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not haproxy_processes(marker), "servefleet down left HAProxy running"
