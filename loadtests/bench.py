"""Side-by-side benchmark: this stack against vLLM's own OpenAI server, ``ray.serve.llm`` and a naive
FastAPI + transformers server, on the same machine, model and load, in one run.

    servefleet bench --levels 1 8 32 64 --duration 20     (or: python -m loadtests.bench ...)

Each server is started alone (never two at once, so they do not share the cores), warmed up, and driven by the
same closed-loop streaming client at each concurrency level for a bounded time; then it is stopped. The client
talks to 127.0.0.1 only. Results go to ``reports/bench/bench.json`` and ``reports/bench/bench.md``.

This VM's speed drifts by up to 2x within an hour, so one pass can compare a server at a fast minute with another
at a slow one. ``--rounds N`` runs every server N times, round-robin, in reverse order every other round (ABBA,
which cancels a steady drift), compares servers within each round, and judges the goals on the median of the
per-round ratios.

Inter-token latency here is per request: (last token time - first token time) / (tokens - 1), vLLM's TPOT.
Per-chunk gaps would flatter a server that sends a chunk per token and penalise one that coalesces tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from loadtests.bench_goals import judge
from loadtests.bench_servers import TARGETS, model_argument
from serve_app.paths import PROJECT_ROOT

PROMPTS = [
    "Write a function that reverses a list.",
    "Explain what a hash map is.",
    "def parse_config(path):",
    "Summarise the plot of a short story.",
    "import json\nimport os\n",
    "How do I read a file line by line?",
    "class Matrix:",
    "List three uses of a queue.",
]


@dataclass
class Sample:
    ok: bool
    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0


@dataclass
class LevelResult:
    target: str
    concurrency: int
    duration_s: float
    requests: int
    failures: int
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    round: int = 1


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarise(target: str, concurrency: int, duration_s: float, samples: list[Sample], round_: int = 1) -> LevelResult:
    good = [s for s in samples if s.ok]
    tokens = sum(s.tokens for s in good)
    ttft = [s.ttft_s * 1000 for s in good if s.ttft_s is not None]
    itl = [s.itl_s * 1000 for s in good if s.itl_s is not None]
    return LevelResult(
        target=target,
        concurrency=concurrency,
        duration_s=round(duration_s, 2),
        requests=len(good),
        failures=len(samples) - len(good),
        output_tokens=tokens,
        output_tokens_per_s=round(tokens / duration_s, 1),
        requests_per_s=round(len(good) / duration_s, 2),
        ttft_p50_ms=_round(percentile(ttft, 50)),
        ttft_p99_ms=_round(percentile(ttft, 99)),
        itl_p50_ms=_round(percentile(itl, 50)),
        itl_p99_ms=_round(percentile(itl, 99)),
        round=round_,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line[6:]


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return Sample(ok=False)
            async for data in _sse_data(response):
                if data == "[DONE]":
                    break
                payload = json.loads(data)
                if payload.get("usage"):
                    tokens = payload["usage"]["completion_tokens"]
                for choice in payload.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        now = time.perf_counter()
                        first = first if first is not None else now
                        last = now
    except httpx.HTTPError:
        return Sample(ok=False)
    end = time.perf_counter()
    if first is None or tokens == 0:
        return Sample(ok=False)
    itl = (last - first) / (tokens - 1) if tokens > 1 and last is not None else None
    return Sample(ok=True, ttft_s=first - start, itl_s=itl, e2e_s=end - start, tokens=tokens)


async def run_level(url: str, model: str, concurrency: int, duration_s: float, max_tokens: int) -> list[Sample]:
    """Closed loop: ``concurrency`` workers each send a request as soon as their last one ends, until the
    time is up. Requests in flight at the deadline are finished and counted (the run is bounded by the
    deadline plus one request)."""
    samples: list[Sample] = []
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(index: int) -> None:
            n = index
            while time.perf_counter() < deadline:
                samples.append(await one_request(client, model, PROMPTS[n % len(PROMPTS)], max_tokens))
                n += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return samples


def warm_up(url: str, model: str) -> None:
    """First requests pay for lazy initialisation on every path; a short load before measuring absorbs it."""
    asyncio.run(run_level(url, model, 4, 3, 16))


def measure(
    target: str, url: str, model: str, levels: list[int], duration_s: float, max_tokens: int, round_: int = 1
) -> list[LevelResult]:
    results = []
    warm_up(url, model)
    for concurrency in levels:
        started = time.perf_counter()
        samples = asyncio.run(run_level(url, model, concurrency, duration_s, max_tokens))
        result = summarise(target, concurrency, time.perf_counter() - started, samples, round_)
        print(
            f"  [{round_}] {target:<12} c={concurrency:<3} {result.output_tokens_per_s:>8.1f} tok/s  "
            f"TTFT p50 {result.ttft_p50_ms} ms  ITL p50 {result.itl_p50_ms} ms  failures {result.failures}"
        )
        results.append(result)
    return results


@dataclass
class Report:
    model: str
    max_tokens: int
    duration_s: float
    levels: list[int]
    rounds: int = 1
    results: list[LevelResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def round_order(targets: list[str], round_: int) -> list[str]:
    """Targets in the order round ``round_`` (from 1) runs them: as given, then reversed, alternately."""
    return list(targets) if round_ % 2 == 1 else list(reversed(targets))


def ratios(report: Report, baseline: str = "vllm") -> list[dict[str, object]]:
    """Each result against the baseline's at the same level in the same round."""
    by_key = {(r.round, r.target, r.concurrency): r for r in report.results}
    rows = []
    for result in report.results:
        base = by_key.get((result.round, baseline, result.concurrency))
        if base is None or result.target == baseline:
            continue
        rows.append(
            {
                "round": result.round,
                "target": result.target,
                "concurrency": result.concurrency,
                "throughput_ratio": round(result.output_tokens_per_s / base.output_tokens_per_s, 3)
                if base.output_tokens_per_s
                else None,
                "ttft_p50_added_ms": None
                if result.ttft_p50_ms is None or base.ttft_p50_ms is None
                else round(result.ttft_p50_ms - base.ttft_p50_ms, 1),
            }
        )
    return rows


def markdown(report: Report) -> str:
    many = report.rounds > 1
    rounds = f", {report.rounds} rounds (ABBA order)" if many else ""
    lead = "| round " if many else ""
    lines = [
        f"Model `{report.model}`, {report.max_tokens} output tokens per request (greedy), "
        f"{report.duration_s:.0f} s per level{rounds}, closed-loop streaming clients on 127.0.0.1.",
        "",
        f"{lead}| server | streams | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| failed |",
        "|---" * (10 if many else 9) + "|",
    ]
    for r in report.results:
        cell = f"| {r.round} " if many else ""
        lines.append(
            f"{cell}| {r.target} | {r.concurrency} | {r.output_tokens_per_s} | {r.requests_per_s} | "
            f"{r.ttft_p50_ms} | {r.ttft_p99_ms} | {r.itl_p50_ms} | {r.itl_p99_ms} | {r.failures} |"
        )
    rows = ratios(report)
    if rows:
        lines += [
            "",
            f"{lead}| server | streams | throughput vs vLLM server | TTFT p50 added (ms) |",
            "|---" * (5 if many else 4) + "|",
        ]
        for row in rows:
            cell = f"| {row['round']} " if many else ""
            lines.append(
                f"{cell}| {row['target']} | {row['concurrency']} | {row['throughput_ratio']}x | "
                f"{row['ttft_p50_added_ms']} |"
            )
    median = " (median of the rounds' ratios)" if many else ""
    lines += ["", f"Goals{median}:", ""]
    lines += [f"- {verdict.describe()}" for verdict in judge(report.results)]
    for target, error in report.errors.items():
        lines.append(f"\n{target} did not run: {error}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS), help="(all)")
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 8, 32, 64], help="streams (1 8 32 64)")
    parser.add_argument("--duration", type=float, default=20, help="seconds per concurrency level (20, max 120)")
    parser.add_argument("--max-tokens", type=int, default=128, help="output tokens per request (128)")
    parser.add_argument("--rounds", type=int, default=1, help="run every server this many times, ABBA order (1, max 5)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench", help="(reports/bench)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if (problem := bounds_problem(args)) is not None:
        parser.error(problem)
    return run(args)


def bounds_problem(args: argparse.Namespace) -> str | None:
    """Why a run is refused, or None: every run is bounded in time and streams."""
    if not 0 < args.duration <= 120 or max(args.levels) > 128 or min(args.levels) < 1:
        return "bounded runs only: --duration in (0, 120], concurrency in [1, 128]"
    if not 1 <= getattr(args, "rounds", 1) <= 5:  # loadtests.cpu_split shares these bounds, without rounds
        return "bounded runs only: --rounds in [1, 5]"
    return None


def run(args: argparse.Namespace) -> int:
    from serve_app import model_builder

    model_path = str(model_builder.build_model("tiny-v1"))
    report = Report(
        model="tiny-v1", max_tokens=args.max_tokens, duration_s=args.duration, levels=args.levels, rounds=args.rounds
    )
    max_num_seqs = max(64, max(args.levels))
    for round_ in range(1, args.rounds + 1):
        for target in round_order(args.targets, round_):
            if target in report.errors:
                continue
            print(f"[{round_}] {target}: starting")
            model = model_argument(target, model_path)
            try:
                with TARGETS[target](model, 1024, max_num_seqs) as (url, served_name):
                    report.results += measure(
                        target, url, served_name, args.levels, args.duration, args.max_tokens, round_
                    )
            except Exception as error:  # one server failing to start must not lose the others' numbers
                report.errors[target] = repr(error)
                print(f"{target}: failed: {error!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    goals = [{"goal": v.goal.describe(), "measured": v.measured, "met": v.met} for v in judge(report.results)]
    summary = {**asdict(report), "ratios_vs_vllm": ratios(report), "goals": goals}
    (args.out / "bench.json").write_text(json.dumps(summary, indent=2))
    text = markdown(report)
    (args.out / "bench.md").write_text(text)
    print("\n" + text)
    print(f"written to {args.out}/bench.json and bench.md")
    return 0 if not report.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
