"""Find what the fault drill kills in ONE cluster's processes, and see when the engine pool is whole again.

Only pids handed in are looked at (the members of the drill's own cluster): other Ray clusters on this machine
run replicas with the same titles. Ray titles an engine replica's process ``ray::ServeReplica:<app>:engine-...``;
vLLM's engine core is a child process of it whose title contains ``EngineCore``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import httpx
import psutil


def _cmdline(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(process.cmdline() or [process.name()])
    return ""


def engine_processes(pids: Iterable[int], app: str) -> dict[int, int | None]:
    """{engine replica pid: its vLLM engine core pid, or None while it has none} among ``pids``."""
    found: dict[int, int | None] = {}
    prefix = f"ray::ServeReplica:{app}:engine-"
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE or not _cmdline(process).startswith(prefix):
                continue
            cores = [c.pid for c in process.children(recursive=True) if "EngineCore" in _cmdline(c)]
            found[pid] = cores[0] if cores else None
    return found


def running_engine_replicas(app: str) -> int:
    """Engine replicas Serve's controller reads as RUNNING (through this process's Ray driver)."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for n, d in status.deployments.items() if n.startswith("engine-"))


def probe(url: str, *, timeout_s: float = 30) -> bool:
    """One short non-streaming request answered with a 200."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "probe"}], "max_tokens": 4}
    with contextlib.suppress(httpx.HTTPError):
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout_s).status_code == 200
    return False


def wait_pool(
    members: Callable[[], list[int]],
    app: str,
    url: str,
    *,
    want: int,
    exclude: Iterable[int] = (),
    timeout_s: float,
    poll_s: float = 1.0,
) -> float | None:
    """Monotonic time at which ``want`` engine replicas (none of ``exclude``) each have a live engine core, Serve
    reads ``want`` of them as RUNNING, and a probe request succeeds; None if not within ``timeout_s``."""
    skip = set(exclude)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replicas = engine_processes(members(), app)
        working = sum(core is not None for pid, core in replicas.items() if pid not in skip)
        with contextlib.suppress(Exception):
            if working >= want and running_engine_replicas(app) >= want and probe(url):
                return time.monotonic()
        time.sleep(poll_s)
    return None
