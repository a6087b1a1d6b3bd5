"""What shadow traffic costs the client: the same closed-loop load with shadowing off and on, side by side in one
run, alternating phases (off, on, off, on, ...) so that drift in the machine's speed hits both alike.

    python -m loadtests.shadow_latency --engine vllm --rounds 2 --duration 30 --concurrency 4
    python -m loadtests.shadow_latency --engine sim  --rounds 3 --duration 20 --concurrency 8

The app serves ``tiny-v1`` to every client (``tiny-v2`` has weight 0); in "on" phases ``shadow: {variant:
tiny-v2, fraction}`` copies each sampled greedy request to ``tiny-v2`` once the client has its answer. Between
phases only the shadow section changes (``servefleet deploy`` would do the same). Client TTFT and end-to-end
latency are compared as ratios on/off; shadow comparisons are counted from the app's own metric, so the report
shows how many copies really ran.

``--engine vllm`` is the honest worst case on this 2-core machine: both engines share the same cores, so the
copies' compute competes with the primary's. ``--engine sim`` (SIMULATED engines, no model compute) isolates
what shadowing costs the serving path itself (the ingress, the extra hops), which is what a fleet with the
shadow on its own accelerators pays. It starts its own Ray cluster (own ports and temp folder) and stops it.
Results: ``reports/shadow/shadow.json`` and ``shadow.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench import Sample, percentile, run_level
from loadtests.bench_servers import free_port
from serve_app.config import ServeFleetConfig, load_config, parse_config
from serve_app.paths import PROJECT_ROOT

REPORT_DIR = PROJECT_ROOT / "reports" / "shadow"
PRIMARY, SHADOW = "tiny-v1", "tiny-v2"


@dataclass(frozen=True)
class PhaseResult:
    round: int
    shadow: bool
    requests: int
    failures: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    e2e_p50_ms: float | None
    e2e_p95_ms: float | None
    shadow_copies: int  # comparisons the app recorded during the phase


def phase_result(round_: int, shadow: bool, samples: list[Sample], copies: int) -> PhaseResult:
    good = [s for s in samples if s.ok]
    ttft = [s.ttft_s * 1000 for s in good if s.ttft_s is not None]
    e2e = [s.e2e_s * 1000 for s in good if s.e2e_s is not None]

    def pct(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value, 1)

    return PhaseResult(
        round_, shadow, len(samples), len(samples) - len(good), pct(ttft, 50), pct(ttft, 95), pct(e2e, 50),
        pct(e2e, 95), copies,
    )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    metric: str
    off_ms: float | None
    on_ms: float | None
    ratio: float | None  # on / off: 1.0 means shadowing costs the client nothing


def pooled(phases: list[PhaseResult], samples: dict[bool, list[Sample]]) -> list[Comparison]:
    """On/off over all phases of each kind, from the raw samples (not an average of phase percentiles)."""
    rows = []
    for metric, pick, q in (
        ("TTFT p50", lambda s: s.ttft_s, 50),
        ("TTFT p95", lambda s: s.ttft_s, 95),
        ("e2e p50", lambda s: s.e2e_s, 50),
        ("e2e p95", lambda s: s.e2e_s, 95),
    ):
        values = {
            kind: percentile([pick(s) * 1000 for s in samples[kind] if s.ok and pick(s) is not None], q)
            for kind in (False, True)
        }
        off, on = values[False], values[True]
        ratio = round(on / off, 3) if on is not None and off else None
        rows.append(
            Comparison(metric, None if off is None else round(off, 1), None if on is None else round(on, 1), ratio)
        )
    return rows


def markdown(args: argparse.Namespace, phases: list[PhaseResult], rows: list[Comparison]) -> str:
    lines = [
        f"# Shadow traffic: client latency off vs on ({args.engine} engines)",
        "",
        f"`python -m loadtests.shadow_latency --engine {args.engine} --rounds {args.rounds} --duration "
        f"{args.duration:g} --concurrency {args.concurrency} --max-tokens {args.max_tokens} --fraction "
        f"{args.fraction:g}`",
        "",
        "| measure | shadow off | shadow on | on / off |",
        "|---|---|---|---|",
        *(f"| {r.metric} | {r.off_ms} ms | {r.on_ms} ms | {r.ratio} |" for r in rows),
        "",
        "| round | shadow | requests | failures | TTFT p50 | TTFT p95 | e2e p50 | e2e p95 | copies compared |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {p.round} | {'on' if p.shadow else 'off'} | {p.requests} | {p.failures} | {p.ttft_p50_ms} | "
            f"{p.ttft_p95_ms} | {p.e2e_p50_ms} | {p.e2e_p95_ms} | {p.shadow_copies} |"
            for p in phases
        ),
    ]
    return "\n".join(lines) + "\n"


def app_config(engine: str, port: int, fraction: float | None) -> ServeFleetConfig:
    """The default config's two variants, all traffic on the primary, shadowing to the other when asked."""
    base = load_config().model_dump(exclude_none=True)
    variants = []
    for variant in base["variants"]:
        variant["weight"] = 100 if variant["name"] == PRIMARY else 0
        if engine == "sim":
            variant.update(backend="sim", num_cpus=0)
        variants.append(variant)
    raw: dict[str, Any] = {"app_name": "shadow-bench", "server": {"port": port}, "variants": variants}
    if fraction is not None:
        raw["shadow"] = {"variant": SHADOW, "fraction": fraction}
    return parse_config(raw)


def shadow_comparisons(metrics_url: str) -> int:
    """Sum of the app's shadow comparison counter, as Ray's metrics agent exports it now."""
    text = httpx.get(metrics_url, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ray_servefleet_shadow_comparisons_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def wait_copies_settled(metrics_url: str, timeout_s: float = 30) -> int:
    """The counter once it stops moving: copies still running at the end of a phase belong to it."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = shadow_comparisons(metrics_url)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 3:
            break
        time.sleep(0.5)
    return last


def run(args: argparse.Namespace) -> tuple[list[PhaseResult], list[Comparison]]:
    import ray
    from ray import serve

    from cluster.local import ray_environment
    from serve_app.builder import build_app
    from serve_app.control import wait_ready

    os.environ.update(ray_environment())
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112 - Ray reads this exact name
    port, metrics_port = free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    ray.init(
        address="local",
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=os.environ["RAY_TMPDIR"],
        namespace="servefleet",
        logging_level="WARNING",
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    phases: list[PhaseResult] = []
    samples: dict[bool, list[Sample]] = {False: [], True: []}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for round_ in range(1, args.rounds + 1):
            for shadow in (False, True):
                config = app_config(args.engine, port, args.fraction if shadow else None)
                serve.run(build_app(config), name=config.app_name, route_prefix="/", blocking=False)
                wait_ready(url, timeout_s=600)
                time.sleep(2)  # let a replaced ingress's predecessor drain before measuring
                asyncio.run(run_level(url, "tiny", args.concurrency, 3, args.max_tokens))  # warm-up, not counted
                before = wait_copies_settled(metrics_url)
                got = asyncio.run(run_level(url, "tiny", args.concurrency, args.duration, args.max_tokens))
                copies = wait_copies_settled(metrics_url) - before
                samples[shadow] += got
                phases.append(phase_result(round_, shadow, got, copies))
                last = phases[-1]
                print(
                    f"  round {round_} shadow {'on ' if shadow else 'off'}: {last.requests} requests, "
                    f"TTFT p50 {last.ttft_p50_ms} ms, e2e p50 {last.e2e_p50_ms} ms, copies {last.shadow_copies}",
                    flush=True,
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    return phases, pooled(phases, samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.shadow_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("vllm", "sim"), default="vllm")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs (1-10)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of load per phase (5-600)")
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop streaming clients (1-64)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--fraction", type=float, default=1.0, help="share of requests copied in 'on' phases")
    parser.add_argument("--out", type=Path, default=REPORT_DIR)
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 10 and 5 <= args.duration <= 600 and 1 <= args.concurrency <= 64):
        parser.error("bounds: --rounds 1-10, --duration 5-600, --concurrency 1-64")
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    phases, rows = run(args)
    report = markdown(args, phases, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"shadow-{args.engine}"
    (args.out / f"{stem}.json").write_text(
        json.dumps({"phases": [asdict(p) for p in phases], "pooled": [asdict(r) for r in rows]}, indent=2)
    )
    (args.out / f"{stem}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
