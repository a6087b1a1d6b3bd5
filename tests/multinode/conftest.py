"""Shared pieces for the multi-node tests: a cluster per module that is always stopped, deploys the way a user
does (``servefleet up --detach --address`` in a process of its own), and bounded waits.

No test here opens a Ray driver in the pytest process: everything is read from the head's dashboard (Ray's
state API and Serve's REST API), so these tests cannot attach to, or be disturbed by, another cluster that the
same pytest session connected to (tests/integration does).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from cluster import multinode

T = TypeVar("T")

SIM_ENGINE = {
    "backend": "sim",
    "num_cpus": 0,  # placement is by `engine` slots; a simulated engine costs almost no CPU
    "resources": {"engine": 1},
    "engine": {"max_model_len": 1024},
}


def tokenizer_model() -> str:
    """A built-in model folder (for its tokenizer: the simulated engine runs no model); built if out of date."""
    from serve_app import model_builder

    return str(model_builder.build_model("tiny-v1"))


def wait_for(
    what: str | Callable[[], str], probe: Callable[[], T | None], *, timeout_s: float, poll_s: float = 0.5
) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test naming ``what`` (a string, or a callable
    for a description of the state at the time) and the last answer."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as error:  # a probe may hit a dashboard that is busy; keep polling until the deadline
            last = repr(error)
        else:
            if last:
                return last
        time.sleep(poll_s)
    described = what() if callable(what) else what
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {described}; last: {last!r}")


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def counts(state: multinode.MultiNodeState, app: str) -> dict[str, tuple[int, int]]:
    """``{deployment: (running, target)}`` from Serve's REST API."""
    return multinode.replica_counts(multinode.serve_applications(state, timeout_s=5), app)


def delete_all_apps(state: multinode.MultiNodeState) -> None:
    """Serve's REST API: delete every application (and Serve with them) on this test's own cluster."""
    httpx.delete(f"{state.dashboard_url}/api/serve/applications/", timeout=60).raise_for_status()
    wait_for("every app deleted", lambda: not multinode.serve_applications(state, timeout_s=5), timeout_s=60)


@pytest.fixture(scope="module")
def cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., multinode.MultiNodeState]]:
    """Start one cluster for the module (``multinode.start`` arguments), stopped at module end however the
    tests went."""
    state_files: list[Path] = []

    def start(**kwargs: Any) -> multinode.MultiNodeState:
        state_file = tmp_path_factory.mktemp("multinode") / "cluster.json"
        state_files.append(state_file)
        started = time.monotonic()
        state = multinode.start(state_file=state_file, **kwargs)
        print(f"\n[multinode] cluster {state.address} up in {time.monotonic() - started:.1f}s")
        return state

    try:
        yield start
    finally:
        for state_file in state_files:
            stop_and_clean(state_file)


def stop_and_clean(state_file: Path) -> None:
    """Stop a test's cluster and drop its Ray temp dir (one per state file, so one per test run), keeping Serve's
    logs beside the state file (pytest keeps its last three runs' temp folders) for whoever reads a failure."""
    multinode.stop(state_file=state_file)
    temp_dir = multinode.temp_dir_for(state_file)
    serve_logs = temp_dir / "session_latest" / "logs" / "serve"
    if serve_logs.is_dir():
        shutil.copytree(serve_logs, state_file.parent / "serve-logs", dirs_exist_ok=True)
    shutil.rmtree(temp_dir, ignore_errors=True)
