"""``servefleet loadtest`` and ``servefleet gate``: subcommands added to the project's argparse CLI by ``register``.

Also runnable alone: ``python -m loadtests.cli loadtest ...``. Locust, scipy and matplotlib are imported inside
the commands, so ``--help`` stays fast. Exit codes: 0 done / gate passed, 1 gate failed, 2 could not run (bad
arguments, refused host, Locust crashed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.guards import MAX_RUN_TIME_S, MAX_USERS, LoadTestBoundsError, parse_duration
from loadtests.profiles import PROFILES

DEFAULT_HOST = "http://127.0.0.1:8000"
DEFAULT_LOADTEST_DIR = Path("reports/loadtest")
DEFAULT_GATE_DIR = Path("reports/gate")
VERDICT_JSON = "verdict.json"


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except LoadTestBoundsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _common(parser: argparse.ArgumentParser, *, users: int, run_time: str) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"API base URL, loopback only (default {DEFAULT_HOST})")
    parser.add_argument("--users", type=int, default=users, help=f"most concurrent users, 1-{MAX_USERS} ({users})")
    parser.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all)")
    parser.add_argument(
        "--run-time", type=_duration, default=parse_duration(run_time), help=f"90, 90s, 2m... ({run_time}; max 1h)"
    )
    parser.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    parser.add_argument("--model", default="tiny", help="model name to request (tiny)")


def register(subparsers: Any) -> None:
    """Add ``loadtest``, ``gate``, ``bench`` and ``soak`` to an ``argparse`` subparsers object."""
    loadtest = subparsers.add_parser(
        "loadtest",
        help="stream chat completions from the API with Locust and report TTFT/ITL per variant",
        description=f"Profiles: {'; '.join(f'{p.name}: {p.description}' for p in PROFILES.values())}. "
        f"Bounded: at most {MAX_USERS} users and {MAX_RUN_TIME_S} s, loopback hosts only.",
    )
    loadtest.add_argument("--profile", choices=list(PROFILES), default="steady", help="load profile (steady)")
    _common(loadtest, users=4, run_time="60s")
    loadtest.add_argument("--variant", default="", help="pin every request to this variant (header)")
    loadtest.add_argument("--sticky-users", action="store_true", help="one sticky routing key per simulated user")
    loadtest.add_argument("--csv-dir", type=Path, default=DEFAULT_LOADTEST_DIR, help=f"({DEFAULT_LOADTEST_DIR})")
    loadtest.add_argument("--web", action="store_true", help="open Locust's web UI on 127.0.0.1 instead")
    loadtest.add_argument("--web-port", type=int, default=8089, help="web UI port (8089)")
    loadtest.set_defaults(func=cmd_loadtest)

    gate = subparsers.add_parser(
        "gate",
        help="replay the same seeded load on a baseline and a candidate variant and judge the candidate",
        description="Runs the load pinned to --baseline, then to --candidate, checks the candidate against the "
        "SLO file and against the baseline (Mann-Whitney U, bootstrap CIs), and writes verdict.json, report.md "
        "and plots into --out. Exit 0 pass, 1 fail, 2 could not run.",
    )
    gate.add_argument("--baseline", required=True, help="baseline variant name, e.g. tiny-v1")
    gate.add_argument("--candidate", required=True, help="candidate variant name, e.g. tiny-v2")
    gate.add_argument("--slo", type=Path, default=None, help="SLO YAML (default: loadtests/slo.yaml)")
    gate.add_argument("--profile", choices=list(PROFILES), default="steady", help="load profile (steady)")
    _common(gate, users=4, run_time="60s")
    gate.add_argument("--out", type=Path, default=DEFAULT_GATE_DIR, help=f"output folder ({DEFAULT_GATE_DIR})")
    gate.set_defaults(func=cmd_gate)

    from loadtests import bench

    bench_parser = subparsers.add_parser(
        "bench",
        help="side-by-side benchmark: this stack, vLLM's server, ray.serve.llm, naive transformers server",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=cmd_bench)

    from loadtests import soak

    soak_parser = subparsers.add_parser(
        "soak",
        help="hold the stack under load for a bounded time and judge every process's memory",
        description=soak.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    soak.add_arguments(soak_parser)
    soak_parser.set_defaults(func=cmd_soak)


def _options(args: argparse.Namespace, **overrides: Any) -> Any:
    from loadtests.run import LoadTestOptions

    fields = {
        "host": args.host,
        "profile": args.profile,
        "users": args.users,
        "spawn_rate": args.spawn_rate,
        "run_time_s": args.run_time,
        "seed": args.seed,
        "model": args.model,
    }
    return LoadTestOptions(**{**fields, **overrides})


def _refused(error: Exception) -> int:
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        for problem in error.errors():
            field = ".".join(str(p) for p in problem["loc"])
            print(f"error: {field}: {problem['msg'].removeprefix('Value error, ')}", file=sys.stderr)
    else:
        print(f"error: {error}", file=sys.stderr)
    return 2


def cmd_loadtest(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from loadtests import report, run

    try:
        options = _options(
            args, variant=args.variant, sticky_users=args.sticky_users, csv_dir=args.csv_dir, label=args.profile
        )
    except ValidationError as error:
        return _refused(error)
    if args.web:
        return run.run_web(options, web_port=args.web_port)
    try:
        result = run.run_headless(options)
    except run.LoadTestFailed as error:
        return _refused(error)
    context = {"profile": options.profile, "host": options.host, "users": str(options.users)}
    context |= {"run time": f"{options.run_time_s:g} s", "variant": options.variant or "routed by weight"}
    files = report.render_run_report(result.records, options.csv_dir, title="Load test", context=context)
    print()
    print(report.summary_table(report.run_summaries(result.records)))
    print(f"\nper-request CSV: {options.requests_csv}\nreport: {files.markdown}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from loadtests import bench

    if (problem := bench.bounds_problem(args)) is not None:
        print(f"servefleet bench: {problem}", file=sys.stderr)
        return 2
    return bench.run(args)


def cmd_soak(args: argparse.Namespace) -> int:
    from loadtests import soak

    if (problem := soak.bounds_problem(args)) is not None:
        print(f"servefleet soak: {problem}", file=sys.stderr)
        return 2
    import shlex

    return soak.run(args, "servefleet " + shlex.join(sys.argv[1:]))


def cmd_gate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from loadtests import gate, report, run
    from loadtests.samples import samples_from_records

    try:
        slo = gate.load_slo(args.slo) if args.slo else gate.load_slo()
        runs = {
            role: _options(args, variant=variant, csv_dir=args.out, label=role)
            for role, variant in (("baseline", args.baseline), ("candidate", args.candidate))
        }
    except (gate.SLOError, ValidationError) as error:
        return _refused(error)
    results = {}
    for role, options in runs.items():
        print(
            f"{role}: {options.variant}, profile {options.profile}, {options.users} users, {options.run_time_s:g} s",
            flush=True,
        )
        try:
            results[role] = run.run_headless(options, quiet=True)
        except run.LoadTestFailed as error:
            return _refused(error)
        print(f"  {len(results[role].records)} requests recorded in {results[role].wall_s:.0f} s", flush=True)
    baseline, candidate = results["baseline"].records, results["candidate"].records
    result = gate.verdict(
        samples_from_records(baseline),
        samples_from_records(candidate),
        slo,
        baseline_name=args.baseline,
        candidate_name=args.candidate,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / VERDICT_JSON).write_text(result.to_json(), encoding="utf-8")
    context = {"profile": args.profile, "users": str(args.users), "run time per variant": f"{args.run_time:g} s"}
    context |= {"seed": str(args.seed), "host": runs["baseline"].host}
    files = report.render_gate_report(result, baseline, candidate, args.out, context=context)
    for check in result.checks:
        print(f"  [{'pass' if check.passed else 'FAIL'}] {check.message}")
    print(f"verdict: {'PASS' if result.passed else 'FAIL'} ({args.out / VERDICT_JSON}, {files.markdown})")
    return 0 if result.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.cli", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
