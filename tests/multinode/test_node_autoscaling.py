"""Ray's own autoscaler adds and removes worker nodes, driven by Serve's replica demand, all through the CLI a
user runs: ``servefleet cluster up --autoscale`` (a head whose autoscaler runs the fake multi-node provider,
no worker nodes at first), ``servefleet up --detach`` onto it, ``servefleet cluster status``, ``cluster down``.

The engine replicas ask for an `engine` slot that only worker nodes offer (one per node), so each replica Serve
wants beyond the nodes present stays pending until the autoscaler starts a node for it; when Serve scales the
pool down, the node it leaves idle is terminated after the idle timeout. The CLI runs with a cache folder of
its own, so its state file, logs and Ray temp dir are this test's alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster import multinode
from loadtests.node_loss import BackgroundLoad
from tests.multinode.conftest import SIM_ENGINE, counts, stop_and_clean, tokenizer_model, wait_for, write_config

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

APP = "elastic"


@dataclass(frozen=True)
class Elastic:
    env: dict[str, str]
    state: multinode.MultiNodeState


def servefleet(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "serve_app", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    print(f"\n$ servefleet {' '.join(args)}  -> {result.returncode}\n{result.stdout[-2500:]}{result.stderr[-2500:]}")
    return result


def elastic_config(port: int) -> dict[str, Any]:
    return {
        "app_name": APP,
        "server": {"port": port},
        "pools": {"resources": {"head": 0.01}},
        "variants": [
            {
                "name": "sim",
                "model": tokenizer_model(),
                "weight": 100,
                **SIM_ENGINE,
                "max_ongoing_requests": 32,
                "autoscaling": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": 1,
                    "downscale_delay_s": 3,
                    "look_back_period_s": 3,
                    "metrics_interval_s": 0.5,
                },
            }
        ],
    }


def alive_workers(state: multinode.MultiNodeState) -> list[multinode.NodeView]:
    return [n for n in multinode.describe(state) if n.alive and not n.is_head]


@pytest.fixture(scope="module")
def elastic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elastic]:
    tmp = tmp_path_factory.mktemp("elastic")
    env = {**os.environ, "SERVEFLEET_CACHE": str(tmp / "cache")}
    state_file = tmp / "cache" / "state" / multinode.STATE_FILE
    try:
        up = servefleet(
            "cluster", "up", "--autoscale", "--nodes", "0", "--max-nodes", "2", "--worker-cpus", "1",
            "--engine-slots", "1", "--idle-timeout", "4", env=env, timeout=180,
        )  # fmt: skip
        assert up.returncode == 0
        state = multinode.read_state(state_file)
        assert state is not None and state.autoscale is not None
        yield Elastic(env=env, state=state)
    finally:
        servefleet("cluster", "down", env=env, timeout=60)
        stop_and_clean(state_file)  # in case the CLI could not


def test_pending_replicas_make_nodes_appear_and_idle_nodes_go_away(elastic: Elastic, tmp_path: Path) -> None:
    state = elastic.state
    assert alive_workers(state) == []  # the autoscaler starts with no worker node at all
    port = multinode.free_port()
    config = write_config(tmp_path / "elastic.yaml", elastic_config(port))

    # 1. The first engine replica cannot be placed on the head: the autoscaler starts a node for it, and `up`
    #    (which finds the running cluster by itself) returns once the app answers.
    started = time.monotonic()
    up = servefleet("up", "--detach", "--config", str(config), "--ready-timeout", "180", env=elastic.env)
    assert up.returncode == 0
    assert "already running" in up.stdout and state.address in up.stdout
    first = alive_workers(state)
    assert len(first) == 1 and first[0].name.startswith("auto-")
    print(f"[multinode] first node and replica ready in {time.monotonic() - started:.1f}s")
    status = servefleet("cluster", "status", env=elastic.env, timeout=60)
    assert status.returncode == 0
    assert "autoscaler: Ray's" in status.stdout and f"{APP}/engine-sim" in status.stdout

    # 2. Load: Serve wants a second replica, which stays pending until a second node joins.
    url = f"http://127.0.0.1:{port}"
    load = BackgroundLoad(url, users=8, duration_s=90, max_requests=5000, max_tokens=64, request_timeout_s=30)
    with load:
        wait_for("Serve to want 2 engine replicas", lambda: counts(state, APP)["engine-sim"][1] == 2, timeout_s=40)
        two = wait_for("a second worker node to appear", lambda: len(alive_workers(state)) == 2, timeout_s=60)
        assert two
        wait_for(
            "the second replica running on the new node",
            lambda: counts(state, APP)["engine-sim"][0] == 2,
            timeout_s=60,
        )
        hosts = {n.name for n in alive_workers(state) for r in n.replicas if r.deployment == "engine-sim"}
        assert len(hosts) == 2, hosts
    assert load.records and all(r.ok for r in load.records), [r.error for r in load.records if not r.ok][:5]

    # 3. Load gone: Serve drops to one replica, and the autoscaler removes the node left idle.
    wait_for("engine-sim back to 1 replica", lambda: counts(state, APP)["engine-sim"] == (1, 1), timeout_s=60)
    wait_for("the idle node to go away", lambda: len(alive_workers(state)) == 1, timeout_s=90)
    dead = [n for n in multinode.describe(state) if not n.alive]
    assert dead and all(n.name.startswith("auto-") for n in dead)
