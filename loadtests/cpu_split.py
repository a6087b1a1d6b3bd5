"""Where the CPU goes while this stack streams: a diagnostic benchmark, not a test.

    python -m loadtests.cpu_split --levels 32 64 --duration 15
    python -m loadtests.cpu_split --direct-ingress              # Ray's direct ingress: no HTTP proxy hop
    python -m loadtests.cpu_split --frontend ray-proxy          # server.frontend (default: the config's, auto)
    python -m loadtests.cpu_split --coalesce 10 400             # coalesce_per_stream_ms, coalesce_ms
    python -m loadtests.cpu_split --pin-serving 1               # every Ray process on CPU 1, vLLM alone on 0
    python -m loadtests.cpu_split --route-and-prepare deployments   # router and preprocess a hop each
    python -m loadtests.cpu_split --target vllm                 # vLLM's own server, the benchmark's reference
    python -m loadtests.cpu_split --ray-env RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0   # a Ray setting, every process

It starts the stack exactly as ``servefleet bench`` does (``tiny-v1`` alone, the default config's engine
settings), drives it with the benchmark's closed-loop streaming client at each level, and reads every process's
CPU time before and after the level. Each level prints the benchmark's figures, how busy each CPU was, and the
CPU each kind of process used, in cores (CPU seconds per second of wall time) and in CPU milliseconds per
request, so that a change to the serving path can be judged by what it costs as well as by what it delivers.
The cost per request moves with this VM's speed too (vLLM's worker took 63 to 114 ms per request on the same
load within one day), so compare processes within a run more than runs with each other. Bounded like the
benchmark: at most 120 s a level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import psutil

from deployments.cpu_affinity import pin_thread_group
from loadtests import bench, bench_servers
from loadtests.soak_memory import process_info
from loadtests.soak_processes import label_processes


@dataclass(frozen=True, slots=True)
class ProcessTime:
    label: str
    cpu_s: float


def snapshot() -> dict[int, ProcessTime]:
    """CPU seconds (user + system) of every process this user can read, by pid, named as the soak names them
    (``bench/ingress``, ``serve proxy``, ``bench/engine-tiny-v1 > vllm Worker``, ...)."""
    infos, cpu_s = [], {}
    for proc in psutil.process_iter():
        try:
            cpu = proc.cpu_times()
            infos.append(process_info(proc))
        except psutil.Error:
            continue
        cpu_s[proc.pid] = cpu.user + cpu.system
    return {pid: ProcessTime(label, cpu_s[pid]) for pid, label in label_processes(infos).items()}


def cores_by_label(
    before: Mapping[int, ProcessTime], after: Mapping[int, ProcessTime], elapsed_s: float
) -> list[tuple[str, float]]:
    """Cores used per process label between two snapshots, largest first. Only processes present in both
    count: one that started or ended inside the window has no reliable delta."""
    used: dict[str, float] = defaultdict(float)
    for pid, end in after.items():
        start = before.get(pid)
        if start is not None and start.label == end.label:
            used[end.label] += max(0.0, end.cpu_s - start.cpu_s)
    return sorted(((label, cpu / elapsed_s) for label, cpu in used.items()), key=lambda item: -item[1])


def _pin(cpus: set[int]) -> int:
    """Pin every thread of every Ray process except vLLM's to ``cpus``; returns how many processes."""
    pinned = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("VLLM::") or not re.search(r"\bray\b|ray::|raylet|gcs_server", cmdline):
            continue
        with contextlib.suppress(OSError):
            pinned += pin_thread_group(proc.pid, cpus) > 0
    return pinned


@contextlib.contextmanager
def _stack(args: argparse.Namespace, model_path: str) -> Iterator[tuple[str, str]]:
    """The server as ``servefleet bench`` starts it, with this run's changes; yields the URL to load and the
    model name to ask for."""
    max_num_seqs = max(64, *args.levels)
    if args.target == "vllm":
        with bench_servers.vllm_server(model_path, 1024, max_num_seqs) as served:
            yield served
        return
    direct_port = None
    if args.direct_ingress:
        # Ray reads these when its processes start; the ingress replica then serves HTTP on this port itself
        # (the port range's upper end is exclusive) and the proxy, which Ray still starts, is not used.
        direct_port = bench_servers.free_port()
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(direct_port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(direct_port + 1)
    stream = None
    if args.coalesce is not None:
        stream = {"coalesce_per_stream_ms": args.coalesce[0], "coalesce_ms": args.coalesce[1]}
    # Direct ingress alone bypasses Ray's Python proxy, so it is measured with that proxy started, not HAProxy.
    frontend = "ray-proxy" if args.direct_ingress else args.frontend
    with bench_servers.servefleet_server(
        model_path,
        1024,
        max_num_seqs,
        stream=stream,
        frontend=frontend,
        ray_env=dict(args.ray_env or []),
        route_and_prepare=args.route_and_prepare,
    ) as (url, _):
        if direct_port is not None:
            url = f"http://127.0.0.1:{direct_port}"
            bench_servers.wait_http(url, "/readyz", 120)
        if args.pin_serving:
            print(f"pinned {_pin(set(args.pin_serving))} Ray processes to CPUs {args.pin_serving}")
        yield url, "tiny"


def _table(rows: Iterable[tuple[str, float]], elapsed_s: float, requests: int, limit: int = 12) -> str:
    """Cores, and CPU ms per request, of the busiest labels."""
    per_request = elapsed_s * 1000 / requests if requests else 0.0
    return "\n".join(
        f"  {cores:5.2f} cores {cores * per_request:7.1f} ms/request  {label}" for label, cores in list(rows)[:limit]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", nargs="+", type=int, default=[32, 64], help="streams (32 64)")
    parser.add_argument("--duration", type=float, default=15, help="seconds per level (15, max 120)")
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens per request (128)")
    parser.add_argument("--target", choices=["servefleet", "vllm"], default="servefleet", help="(servefleet)")
    parser.add_argument("--direct-ingress", action="store_true", help="Ray Serve's direct ingress, no proxy")
    parser.add_argument("--frontend", choices=["auto", "haproxy", "ray-proxy"], help="server.frontend (config's)")
    parser.add_argument(
        "--route-and-prepare", choices=["ingress", "deployments"], help="pools.route_and_prepare (config's)"
    )
    parser.add_argument("--coalesce", nargs=2, type=float, metavar=("PER_STREAM_MS", "MAX_MS"), help="window")
    parser.add_argument("--ray-env", nargs="+", metavar="KEY=VALUE", type=_setting, help="for every Ray process")
    parser.add_argument("--pin-serving", nargs="+", type=int, metavar="CPU", help="pin Ray's processes here")


def _setting(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (problem := bench.bounds_problem(args)) is not None:
        parser.error(problem)
    from serve_app import model_builder

    model_path = str(model_builder.build_model("tiny-v1"))
    with _stack(args, model_path) as (url, model):
        bench.warm_up(url, model)
        for streams in args.levels:
            psutil.cpu_percent(percpu=True)  # starts the window the next call measures
            before, started = snapshot(), time.perf_counter()
            samples = asyncio.run(bench.run_level(url, model, streams, args.duration, args.max_tokens))
            elapsed = time.perf_counter() - started
            busy = [round(percent / 100, 2) for percent in psutil.cpu_percent(percpu=True)]
            result = bench.summarise(args.target, streams, elapsed, samples)
            print(
                f"{streams} streams: {result.output_tokens_per_s} tok/s, {result.requests} requests, TTFT p50 "
                f"{result.ttft_p50_ms} ms, ITL p50 {result.itl_p50_ms} ms, {result.failures} failed; CPUs busy {busy}"
            )
            print(_table(cores_by_label(before, snapshot(), elapsed), elapsed, result.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
