"""Head-node resilience: a cluster whose GCS keeps its tables in Redis (``multinode.start(gcs_ft=True)``), one app
of SIMULATED engines on a worker node, and the head's gcs_server SIGKILLed and started again under load.

Proven here: requests keep succeeding while the GCS is down (the HTTP proxy, the replicas and their handles talk
to each other directly, not through the GCS), the app is still RUNNING afterwards, the nodes are the same nodes
(the new GCS reloaded the node table from Redis instead of starting an empty cluster), and a deployment update
afterwards works: it looks the Serve controller up by name and creates a new replica actor, both GCS work.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cluster import multinode
from loadtests.node_loss import BackgroundLoad, RequestRecord, analyze, deploy
from tests.multinode.conftest import SIM_ENGINE, counts, tokenizer_model, wait_for, write_config

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

APP = "gcsft"
# Kept down on purpose, beyond the restart itself: a head that restarts takes a while. Longer outages can be
# measured with SERVEFLEET_GCS_DOWN_S; past Ray's gcs_rpc_server_reconnect_timeout_s (60 s) the raylets give up.
GCS_DOWN_S = float(os.environ.get("SERVEFLEET_GCS_DOWN_S", "3"))


def app_config(port: int, replicas: int) -> dict[str, Any]:
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
                "replicas": replicas,
                "max_ongoing_requests": 64,
            }
        ],
    }


class PlainLoad:
    """Non-streaming chat completions from ``users`` threads, bounded by time and count like BackgroundLoad."""

    def __init__(self, url: str, *, users: int, duration_s: float, max_requests: int) -> None:
        self.url = url
        self.records: list[RequestRecord] = []
        self._deadline = time.monotonic() + duration_s
        self._left = max_requests
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, daemon=True) for _ in range(users)]
        for thread in self._threads:
            thread.start()

    def _user(self) -> None:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
        with httpx.Client(base_url=self.url, timeout=20) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                with self._lock:
                    if self._left <= 0:
                        return
                    self._left -= 1
                started = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=body)
                    ok = response.status_code == 200 and bool(response.json()["choices"][0]["message"]["content"])
                    status, error = response.status_code, None if ok else response.text[:200]
                except httpx.HTTPError as exc:
                    ok, status, error = False, None, repr(exc)
                self.records.append(RequestRecord(started, time.monotonic(), status, ok, error))

    def stop(self) -> list[RequestRecord]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return list(self.records)


@dataclass(frozen=True)
class Outage:
    """Requests by when they ran: ``during`` overlapped [kill, GCS back], ``after`` started once it was back."""

    during: list[RequestRecord]
    after: list[RequestRecord]

    @classmethod
    def split(cls, records: list[RequestRecord], kill_at: float, back_at: float) -> Outage:
        return cls(
            during=[r for r in records if r.started < back_at and r.ended > kill_at],
            after=[r for r in records if r.started >= back_at],
        )

    def failed(self) -> list[str]:
        return [f"{r.status} {r.error}" for r in self.during + self.after if not r.ok]


@pytest.fixture(scope="module")
def cluster(cluster_factory) -> Iterator[multinode.MultiNodeState]:
    yield cluster_factory(nodes=1, worker_cpus=2, engine_slots=3, gcs_ft=True)


def test_serving_survives_a_gcs_restart_and_the_gcs_recovers_its_state_from_redis(
    cluster: multinode.MultiNodeState, tmp_path
) -> None:
    state = cluster
    assert state.redis is not None
    port = multinode.free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    deploy(state, write_config(tmp_path / "app.yaml", app_config(port, replicas=2)), port, timeout_s=240)
    print(f"\n[gcs-ft] app deployed in {time.monotonic() - started:.1f}s")
    nodes_before = {n.node_id: n.name for n in multinode.describe(state) if n.alive}

    load_s = GCS_DOWN_S + 40
    streams = BackgroundLoad(url, users=3, duration_s=load_s, max_requests=3000, max_tokens=32, request_timeout_s=20)
    with streams:
        plain = PlainLoad(url, users=2, duration_s=load_s, max_requests=3000)
        time.sleep(3)
        kill_at = time.monotonic()
        state, restart = multinode.restart_gcs(state, down_s=GCS_DOWN_S)
        listening_at = kill_at + restart.down_s
        # Back means answering again: the dashboard's node list comes from the new GCS.
        wait_for(
            "the restarted GCS to list every node alive",
            lambda: {n.node_id for n in multinode.describe(state, timeout_s=3) if n.alive} == set(nodes_before),
            timeout_s=30,
        )
        back_at = time.monotonic()
        time.sleep(3)
        plain_records = plain.stop()
    end_at = time.monotonic()
    stream_records = streams.records
    overall = analyze(stream_records + plain_records, kill_at, end_at=end_at)
    streamed, unary = Outage.split(stream_records, kill_at, back_at), Outage.split(plain_records, kill_at, back_at)
    print(
        f"\n[gcs-ft] GCS killed, listening again after {restart.down_s:.2f}s (kept down {GCS_DOWN_S:g}s), "
        f"answering after {back_at - kill_at:.2f}s; streaming: {len(streamed.during)} during the outage, "
        f"{len(streamed.after)} after, failed {len(streamed.failed())}; non-streaming: {len(unary.during)} during, "
        f"{len(unary.after)} after, failed {len(unary.failed())}; longest time with no request completing "
        f"{overall.stall_s:.2f}s, slowest request {overall.slowest_s:.2f}s"
    )
    # Serving went on without the GCS: requests completed while it was down, and none failed then or after.
    ended_while_down = [r for r in stream_records + plain_records if r.ok and kill_at < r.ended < listening_at]
    assert len(ended_while_down) >= 5, "nothing was served while the GCS was down"
    assert streamed.after and unary.after
    assert streamed.failed() == [] and unary.failed() == []

    # Same nodes, same app: the new GCS reloaded its tables from Redis (an empty GCS would know no node).
    assert multinode.gcs_server_pid(state) == restart.started_pid
    assert multinode.serve_applications(state)[APP]["status"] == "RUNNING"

    # A deployment update needs the GCS: a named-actor lookup of Serve's controller and a new replica actor.
    started = time.monotonic()
    deploy(state, write_config(tmp_path / "app3.yaml", app_config(port, replicas=3)), port, timeout_s=240)
    wait_for("a third engine replica", lambda: counts(state, APP)["engine-sim"] == (3, 3), timeout_s=60)
    print(f"[gcs-ft] after the restart: update to 3 replicas done in {time.monotonic() - started:.1f}s")
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "again"}], "max_tokens": 8},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert {n.node_id: n.name for n in multinode.describe(state) if n.alive} == nodes_before
