"""Kill a worker node under load and measure what clients see: failed requests and time to recover.

``python -m loadtests.node_loss`` starts its own multi-node cluster (cluster/multinode.py: a head and
``--nodes`` worker nodes on 127.0.0.2, its own state file, free ports), deploys the simulated-engine fleet of
``cluster/configs/multinode-sim.yaml``, runs closed-loop streaming load (``--users`` clients, each request
streamed to ``[DONE]`` and checked like a load-test user does), SIGKILLs the raylet of the worker node that
hosts the most engine replicas, keeps the load on, and stops everything it started, whatever happens.

It reports, and writes as JSON and Markdown under ``--out``:

- requests before / after the kill, and failures split into those **in flight at the kill** (started before,
  ended after) and **new** ones (started after the kill: these should never fail);
- whether every failure was retryable (503/429, or a ``service_unavailable`` error event in the stream) and
  how long it took to fail (``max_fail_s``: nothing may hang);
- ``detect_s``: kill to the GCS marking the node dead; ``replicas_back_s``: kill to every engine deployment
  running its target replica count again (capacity back); ``first_ok_s``: kill to the first request that
  started after the kill and succeeded; ``stall_s``: the longest time after the kill with no request completing
  successfully.

The load generator is reused by ``tests/multinode``; ``analyze`` is pure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from loadtests.guards import check_loopback_host
from loadtests.sse import SSEDecoder, StreamMeter

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "cluster" / "configs" / "multinode-sim.yaml"
RETRYABLE_STATUS = (429, 503)
RETRYABLE_TYPES = ("service_unavailable", "rate_limit_error")


# ---------------------------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One streamed request as the client saw it (monotonic seconds)."""

    started: float
    ended: float
    status: int | None  # None: no HTTP response at all (connection error, client timeout)
    ok: bool
    error: str | None = None
    retryable: bool = False
    variant: str | None = None

    @property
    def duration(self) -> float:
        return self.ended - self.started


def _error_type(payload: str) -> str | None:
    """The OpenAI error ``type`` of an SSE error event, None for any other payload."""
    with contextlib.suppress(ValueError, AttributeError):
        error = json.loads(payload).get("error")
        if isinstance(error, dict):
            return str(error.get("type"))
    return None


async def stream_once(client: httpx.AsyncClient, body: dict[str, Any], timeout_s: float) -> RequestRecord:
    """POST one streaming chat completion and read it to the end; never raises, never outlives ``timeout_s``."""
    started = time.monotonic()
    status: int | None = None
    variant: str | None = None
    meter = StreamMeter(started)
    events = SSEDecoder()  # beside the meter, for the error event's type, which the meter does not keep
    error_types: list[str] = []
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                status = response.status_code
                variant = response.headers.get("x-servefleet-variant")
                if status != 200:
                    text = (await response.aread()).decode(errors="replace")
                    error = f"HTTP {status}: {text[:200]}"
                else:
                    async for piece in response.aiter_raw():
                        meter.feed(time.monotonic(), piece)
                        error_types += filter(None, map(_error_type, events.feed(piece)))
    except TimeoutError:
        error = f"client timeout after {timeout_s:g}s"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    ended = time.monotonic()
    if error is None and status == 200:
        error = meter.finish(ended).error
    retryable = status in RETRYABLE_STATUS or any(t in RETRYABLE_TYPES for t in error_types)
    if error_types:
        error = f"{error} [{', '.join(error_types)}]"
    return RequestRecord(
        started=started,
        ended=ended,
        status=status,
        ok=error is None and status == 200,
        error=error,
        retryable=retryable,
        variant=variant,
    )


def chat_body(index: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"request {index}: tell me about rivers and valleys"}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": f"user-{index % 97}",
    }


class BackgroundLoad:
    """Closed-loop streaming load in a thread of its own: ``users`` clients, each sending its next request
    when the last one ends. Bounded twice: it stops after ``duration_s`` or ``max_requests``, whichever
    first, and every request is cut at ``request_timeout_s``. ``stop()`` ends it early and waits for it."""

    def __init__(
        self,
        url: str,
        *,
        users: int,
        duration_s: float,
        max_requests: int,
        request_timeout_s: float = 30,
        max_tokens: int = 64,
        body: Callable[[int, int], dict[str, Any]] = chat_body,
    ) -> None:
        self.url = check_loopback_host(url)
        self.users = users
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.request_timeout_s = request_timeout_s
        self.max_tokens = max_tokens
        self._body = body
        self.records: list[RequestRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="servefleet-load", daemon=True)
        self.started_at = 0.0

    def __enter__(self) -> BackgroundLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> list[RequestRecord]:
        self._stop.set()
        self._thread.join(timeout_s if timeout_s is not None else self.request_timeout_s + 10)
        if self._thread.is_alive():
            raise RuntimeError("the load thread did not stop")
        return list(self.records)

    def wait(self) -> list[RequestRecord]:
        """Let the run end by itself (duration or request count), then return every record."""
        self._thread.join(self.duration_s + self.request_timeout_s + 10)
        return self.stop()

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        deadline = self.started_at + self.duration_s
        counter = itertools.count()
        limits = httpx.Limits(max_connections=self.users, max_keepalive_connections=self.users)
        timeout = httpx.Timeout(self.request_timeout_s, connect=5)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=timeout) as client:

            async def user() -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    index = next(counter)
                    if index >= self.max_requests:
                        return
                    record = await stream_once(client, self._body(index, self.max_tokens), self.request_timeout_s)
                    self.records.append(record)
                    if not record.ok:
                        await asyncio.sleep(0.05)  # a failing server is not hammered in a tight loop

            await asyncio.gather(*(user() for _ in range(self.users)))


# ---------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class NodeLossReport:
    requests: int
    ok: int
    before_kill: int
    failed_before: int
    in_flight_at_kill: int
    failed_in_flight: int
    after_kill: int
    failed_new: int  # started after the kill and failed: what node loss must never cause
    failed_not_retryable: int
    max_fail_s: float | None  # longest a failed request took to fail, counted from the kill for in-flight ones
    slowest_s: float  # longest any request took
    first_ok_s: float | None
    stall_s: float
    ok_per_s_before: float
    ok_per_s_after_recovery: float | None
    died_s: float = 0.0  # kill to the node's replica processes gone
    detect_s: float | None = None
    replicas_back_s: float | None = None
    errors: dict[str, int] = field(default_factory=dict)


def analyze(
    records: Sequence[RequestRecord],
    kill_at: float,
    *,
    died_at: float | None = None,
    end_at: float | None = None,
    detect_at: float | None = None,
    replicas_back_at: float | None = None,
) -> NodeLossReport:
    """Split requests by the node's death and measure what a client saw. Pure; times are the records' clock.

    A node does not die in an instant: its raylet is killed at ``kill_at`` and its replica processes notice and
    exit a moment later, at ``died_at`` (``kill_at`` if unknown). A request in flight at any time in between
    may have been on the node; one that started after ``died_at`` was not, and must not fail.
    """
    records = sorted(records, key=lambda r: r.started)
    died_at = kill_at if died_at is None else max(died_at, kill_at)
    end_at = end_at if end_at is not None else max((r.ended for r in records), default=kill_at)
    before = [r for r in records if r.ended <= kill_at]
    in_flight = [r for r in records if r.started <= died_at and r.ended > kill_at]
    after = [r for r in records if r.started > died_at]
    failed = [r for r in records if not r.ok]
    fail_times = [r.ended - max(r.started, kill_at) for r in failed]
    first_ok = next((r.ended - kill_at for r in sorted(after, key=lambda r: r.ended) if r.ok), None)
    ok_ends = sorted(r.ended for r in records if r.ok and r.ended > kill_at)
    marks = [kill_at, *ok_ends, end_at]
    stall = max((b - a for a, b in itertools.pairwise(marks)), default=0.0)
    first_start = min((r.started for r in records), default=kill_at)
    ok_before = sum(r.ok for r in before)
    rate_before = ok_before / (kill_at - first_start) if kill_at > first_start else 0.0
    rate_after: float | None = None
    if replicas_back_at is not None and end_at > replicas_back_at:
        done = [r for r in records if r.ok and replicas_back_at < r.ended <= end_at]
        rate_after = len(done) / (end_at - replicas_back_at)
    errors: dict[str, int] = {}
    for r in failed:
        key = (r.error or "?")[:120]
        errors[key] = errors.get(key, 0) + 1
    return NodeLossReport(
        requests=len(records),
        ok=sum(r.ok for r in records),
        before_kill=len(before),
        failed_before=sum(not r.ok for r in before),
        in_flight_at_kill=len(in_flight),
        failed_in_flight=sum(not r.ok for r in in_flight),
        after_kill=len(after),
        failed_new=sum(not r.ok for r in after),
        failed_not_retryable=sum(not r.retryable for r in failed),
        max_fail_s=max(fail_times) if fail_times else None,
        slowest_s=max((r.duration for r in records), default=0.0),
        first_ok_s=first_ok,
        stall_s=stall,
        ok_per_s_before=rate_before,
        ok_per_s_after_recovery=rate_after,
        died_s=died_at - kill_at,
        detect_s=None if detect_at is None else detect_at - kill_at,
        replicas_back_s=None if replicas_back_at is None else replicas_back_at - kill_at,
        errors=errors,
    )


def markdown(report: NodeLossReport, *, title: str) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows = [
        ("requests (ok)", f"{report.requests} ({report.ok})"),
        ("ended before the kill / of them failed", f"{report.before_kill} / {report.failed_before}"),
        ("in flight while the node died / of them failed", f"{report.in_flight_at_kill} / {report.failed_in_flight}"),
        ("started after the node died / of them failed", f"{report.after_kill} / {report.failed_new}"),
        ("failures not retryable", str(report.failed_not_retryable)),
        ("longest time to fail (s)", fmt(report.max_fail_s)),
        ("slowest request (s)", fmt(report.slowest_s)),
        ("node's replica processes gone after (s)", fmt(report.died_s)),
        ("node marked dead by the GCS after (s)", fmt(report.detect_s)),
        ("first new request OK after (s)", fmt(report.first_ok_s)),
        ("longest stretch with no completion (s)", fmt(report.stall_s)),
        ("engine replicas back to target after (s)", fmt(report.replicas_back_s)),
        ("completions/s before the kill", fmt(report.ok_per_s_before)),
        ("completions/s after replicas are back", fmt(report.ok_per_s_after_recovery)),
    ]
    lines = [f"### {title}", "", "| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if report.errors:
        lines += ["", "Errors:", *(f"- {n} x `{e}`" for e, n in sorted(report.errors.items(), key=lambda x: -x[1]))]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- cluster probes


def engine_replicas(applications: dict[str, Any], app: str, *, exclude_node: str | None = None) -> dict[str, int]:
    """RUNNING replicas per engine deployment in Serve's REST answer, not counting any on ``exclude_node`` (a
    dead node's replicas read as RUNNING until Serve's controller notices)."""
    deployments = (applications.get(app) or {}).get("deployments") or {}
    return {
        name: sum(
            r.get("state") == "RUNNING" and (exclude_node is None or r.get("node_id") != exclude_node)
            for r in d.get("replicas") or []
        )
        for name, d in deployments.items()
        if name.startswith("engine-")
    }


def wait_engine_replicas(
    state: Any,
    app: str,
    expected: dict[str, int],
    *,
    timeout_s: float,
    exclude_node: str | None = None,
    poll_s: float = 0.25,
) -> float | None:
    """Monotonic time at which every engine deployment runs ``expected`` replicas (off ``exclude_node``), or None
    on timeout. Reads Serve's REST API on the head's dashboard: no Ray driver."""
    from cluster.multinode import serve_applications

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            running = engine_replicas(serve_applications(state, timeout_s=5), app, exclude_node=exclude_node)
            if all(running.get(name, 0) >= n for name, n in expected.items()):
                return time.monotonic()
        time.sleep(poll_s)
    return None


def deploy(state: Any, config: Path, port: int, *, timeout_s: float = 300) -> None:
    """``servefleet up --detach --address`` onto the cluster: the path a user takes, in a process of its own."""
    import subprocess

    command = [sys.executable, "-m", "serve_app", "up", "--detach", "--address", state.address]
    command += ["--config", str(config), "--port", str(port), "--ready-timeout", str(timeout_s)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s + 60)
    if result.returncode != 0:
        raise RuntimeError(
            f"servefleet up failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def wait_node_dead(dashboard_url: str, node_id: str, *, timeout_s: float, poll_s: float = 0.25) -> float | None:
    from ray.util.state import get_node

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            node = get_node(node_id, address=dashboard_url, timeout=5)
            if node is not None and node.state == "DEAD":
                return time.monotonic()
        time.sleep(poll_s)
    return None


def wait_pids_gone(pids: Iterable[int], *, timeout_s: float, poll_s: float = 0.05) -> float | None:
    """Monotonic time at which none of ``pids`` runs any more (zombies count as gone), or None on timeout."""
    import psutil

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout_s
    pending = set(pids)
    while time.monotonic() < deadline:
        pending = {pid for pid in pending if alive(pid)}
        if not pending:
            return time.monotonic()
        time.sleep(poll_s)
    return None


def watch_recovery(
    state: Any, app: str, expected: dict[str, int], victim: Any, *, timeout_s: float
) -> tuple[float | None, float | None, float | None]:
    """After a kill, watch three things at once (each may come first): the victim's replica processes gone,
    the GCS marking the node dead, every engine deployment back to ``expected`` running replicas elsewhere.
    Returns their monotonic times (None: not within ``timeout_s``)."""
    from concurrent.futures import ThreadPoolExecutor

    pids = [r.pid for r in victim.replicas if r.pid]
    with ThreadPoolExecutor(3, thread_name_prefix="node-loss-watch") as pool:
        died = pool.submit(wait_pids_gone, pids, timeout_s=timeout_s)
        dead = pool.submit(wait_node_dead, state.dashboard_url, victim.node_id, timeout_s=timeout_s)
        back = pool.submit(wait_engine_replicas, state, app, expected, exclude_node=victim.node_id, timeout_s=timeout_s)
        return died.result(), dead.result(), back.result()


def busiest_worker(nodes: Iterable[Any]) -> Any:
    """The alive worker node hosting the most engine replicas (the worst one to lose)."""
    workers = [n for n in nodes if n.alive and not n.is_head]
    return max(workers, key=lambda n: (sum(r.deployment.startswith("engine-") for r in n.replicas), n.name))


# ---------------------------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class SimCluster:
    """A running multi-node cluster serving the simulated-engine app, ready for load."""

    state: Any  # cluster.multinode.MultiNodeState
    app: str
    url: str
    expected: dict[str, int]  # engine deployment -> replicas it runs when at full capacity


@contextlib.contextmanager
def sim_cluster(
    config_file: Path,
    *,
    nodes: int,
    state_name: str = "node-loss.json",
    system_config: dict[str, Any] | None = None,
    start_timeout_s: float = 120,
) -> Iterator[SimCluster]:
    """Start a head and ``nodes`` workers (state file ``state_name`` in the cache's state folder), deploy
    ``config_file`` on it and wait for every engine replica; on exit, stop exactly that cluster."""
    from cluster import multinode
    from serve_app.config import load_config
    from serve_app.control import base_url, wait_ready
    from serve_app.paths import state_dir

    port = multinode.free_port()
    config = load_config(config_file, overrides={"server": {"port": port}})
    state_file = state_dir() / state_name
    multinode.stop(state_file=state_file)  # a run killed before its cleanup left this behind
    state = multinode.start(nodes=nodes, state_file=state_file, system_config=system_config, timeout_s=start_timeout_s)
    try:
        deploy(state, config_file, port)
        url = base_url(config)
        wait_ready(url, 60)
        expected = {f"engine-{v.name}": (v.autoscaling.min_replicas if v.autoscaling else v.replicas)
                    for v in config.variants}  # fmt: skip
        if wait_engine_replicas(state, config.app_name, expected, timeout_s=120) is None:
            raise RuntimeError(f"engine replicas never reached {expected}")
        yield SimCluster(state, config.app_name, url, expected)
    finally:
        multinode.stop(state_file=state_file)


def run(args: argparse.Namespace) -> NodeLossReport:
    from cluster import multinode
    from serve_app.paths import state_dir

    config_file = args.config
    if args.unpinned:  # the light deployments may land on worker nodes too (and die with them)
        data = yaml.safe_load(args.config.read_text())
        data.get("pools", {}).pop("resources", None)
        config_file = state_dir() / "node-loss-unpinned.yaml"
        config_file.write_text(yaml.safe_dump(data))
    system_config = {} if args.ray_health_checks else None
    with sim_cluster(config_file, nodes=args.nodes, system_config=system_config) as cluster:
        state, expected = cluster.state, cluster.expected
        nodes = multinode.describe(state)
        print(multinode.format_nodes(nodes))
        victim = busiest_worker(nodes)
        load = BackgroundLoad(
            cluster.url,
            users=args.users,
            duration_s=args.warmup + args.after,
            max_requests=args.max_requests,
            request_timeout_s=args.request_timeout,
            max_tokens=args.max_tokens,
        )
        with load:
            time.sleep(args.warmup)
            kill_at = time.monotonic()
            pid = multinode.kill_raylet(state, victim.name)
            print(f"killed the raylet of {victim.name} (pid {pid}) at +{kill_at - load.started_at:.1f}s")
            died_at, detect_at, back_at = watch_recovery(state, cluster.app, expected, victim, timeout_s=args.after)
            records = load.wait()
        end_at = max((r.ended for r in records), default=kill_at)
        print(multinode.format_nodes(multinode.describe(state)))
        return analyze(records, kill_at, died_at=died_at, end_at=end_at, detect_at=detect_at, replicas_back_at=back_at)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.node_loss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="app config (simulated engines)")
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes")
    parser.add_argument("--users", type=int, default=8, help="concurrent streaming clients")
    parser.add_argument("--warmup", type=float, default=15, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=45, help="seconds of load after the kill")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    parser.add_argument("--request-timeout", type=float, default=30, help="client-side cut per request (s)")
    parser.add_argument(
        "--ray-health-checks",
        action="store_true",
        help="keep Ray's default node failure detection (about 15 s) instead of the cluster's fast one (about 3 s)",
    )
    parser.add_argument(
        "--unpinned", action="store_true", help="let the light deployments run on worker nodes (drop pools.resources)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/node_loss"), help="where to write the report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    text = markdown(
        report,
        title=f"Node loss: {args.nodes} worker nodes, {args.users} streaming users, {args.max_tokens} tokens each",
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "node_loss.json").write_text(json.dumps(asdict(report), indent=2))
    (args.out / "node_loss.md").write_text(text + "\n")
    ok = (
        report.failed_before == 0
        and report.failed_new == 0
        and report.failed_not_retryable == 0
        and report.replicas_back_s is not None
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
