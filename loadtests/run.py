"""Start Locust as a subprocess on ``loadtests/locustfile.py`` and collect its per-request CSV as typed records.

A subprocess, not Locust in-process: Locust monkey-patches the standard library with gevent on import, which
the CLI (and anything else in the same process) should not inherit. The command line is built by a pure
function, so tests can check it without starting anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loadtests import options as opt
from loadtests.guards import MAX_USERS, check_loopback_host, check_run_time
from loadtests.profiles import PROFILES
from loadtests.records import RequestRecord, read_records

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STOP_TIMEOUT_S = 30
"""At the end of a run, users get this long to finish the request in flight, so that the last requests (often
the longest) are measured rather than cut off and silently dropped."""
START_GRACE_S = 60
"""Beyond run time and stop timeout: Locust's start-up and shutdown. A run past all of this is killed."""


class LoadTestOptions(BaseModel):
    """One bounded Locust run. Validated on construction: loopback host, users and run time within bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(description="Base URL of the API; loopback only.")
    profile: str = Field(default="steady", description="A name from loadtests/profiles.py.")
    users: int = Field(default=4, ge=1, le=MAX_USERS, description="Most concurrent users.")
    spawn_rate: float | None = Field(default=None, gt=0, description="Users started per second; default: all at once.")
    run_time_s: float = Field(default=60, description="Length of the run, seconds.")
    variant: str = Field(default="", description="Pin every request to this variant; empty: routed by weight.")
    model: str = Field(default=opt.DEFAULT_MODEL)
    seed: int = Field(default=0, description="Workload seed; the same seed replays the same prompts.")
    sticky_users: bool = False
    request_timeout_s: float = Field(default=opt.DEFAULT_REQUEST_TIMEOUT_S, gt=0)
    stream_fraction: float = Field(default=1.0, ge=0, le=1, description="Share of requests streamed; others not.")
    stop_timeout_s: int = Field(default=STOP_TIMEOUT_S, ge=1, le=600, description="Locust's --stop-timeout.")
    csv_dir: Path = Field(default=Path("loadtest-results"), description="Where Locust's CSVs and ours go.")
    label: str = Field(default="run", pattern=r"^[A-Za-z0-9._-]+$", description="File name prefix in csv_dir.")

    @field_validator("host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        return check_loopback_host(value)

    @field_validator("run_time_s")
    @classmethod
    def _bounded(cls, value: float) -> float:
        return check_run_time(value)

    @field_validator("profile")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown profile {value!r}; known: {', '.join(PROFILES)}")
        return value

    @property
    def csv_prefix(self) -> Path:
        return self.csv_dir / self.label

    @property
    def requests_csv(self) -> Path:
        return Path(f"{self.csv_prefix}_requests.csv")

    @property
    def stats_csv(self) -> Path:
        return Path(f"{self.csv_prefix}_stats.csv")

    @property
    def log_file(self) -> Path:
        return Path(f"{self.csv_prefix}_locust.log")


def locust_command(
    options: LoadTestOptions, *, web: bool = False, web_port: int = 8089, quiet: bool = False
) -> list[str]:
    """The ``python -m locust`` command line for ``options``: headless by default, else the web UI on loopback."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        options.host,
        "-u",
        str(options.users),
        "-r",
        f"{options.spawn_rate or options.users:g}",
        "--run-time",
        f"{options.run_time_s:g}s",
        "--stop-timeout",
        str(options.stop_timeout_s),
        opt.PROFILE,
        options.profile,
        opt.MODEL,
        options.model,
        opt.SEED,
        str(options.seed),
        opt.REQUEST_TIMEOUT,
        f"{options.request_timeout_s:g}",
        opt.REQUESTS_CSV,
        str(options.requests_csv),
    ]
    if options.variant:
        command += [opt.VARIANT, options.variant]
    if options.sticky_users:
        command.append(opt.STICKY)
    if options.stream_fraction != 1:
        command += [opt.STREAM_FRACTION, f"{options.stream_fraction:g}"]
    if web:
        return [*command, "--web-host", "127.0.0.1", "--web-port", str(web_port)]
    # Failed requests are part of the measurement, not a crash: exit 0 so that only a real crash is non-zero.
    command += ["--headless", "--csv", str(options.csv_prefix), "--exit-code-on-error", "0"]
    if quiet:
        command.append("--only-summary")
    return command


def _environment() -> dict[str, str]:
    """The child finds ``loadtests`` even when the project is not installed; the SERVEFLEET_LOADTEST_* variables
    are dropped because the command line already says everything, and must win."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVEFLEET_LOADTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class LoadTestFailed(RuntimeError):
    """Locust did not complete the run (crashed, was refused, or ran past its time)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    options: LoadTestOptions
    records: list[RequestRecord]
    returncode: int
    wall_s: float


Runner = Callable[..., Any]


def run_headless(options: LoadTestOptions, *, quiet: bool = False, runner: Runner = subprocess.run) -> RunResult:
    """Run Locust headless to the end of its shape and return every request it recorded.

    ``quiet`` sends Locust's output (logs and its final summary) to ``options.log_file`` instead of the terminal.
    """
    options.csv_dir.mkdir(parents=True, exist_ok=True)
    # The per-request CSV is appended to, so a stale one from an earlier run would mix two runs' samples.
    options.requests_csv.unlink(missing_ok=True)
    command = locust_command(options, quiet=quiet)
    timeout = options.run_time_s + options.stop_timeout_s + START_GRACE_S
    logger.info("running: %s", " ".join(command))
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        output: dict[str, Any] = {}
        if quiet:
            log = stack.enter_context(options.log_file.open("w", encoding="utf-8"))
            output = {"stdout": log, "stderr": subprocess.STDOUT}
        try:
            completed = runner(command, cwd=REPO_ROOT, env=_environment(), timeout=timeout, check=False, **output)
        except subprocess.TimeoutExpired:
            raise LoadTestFailed(f"Locust ran past {timeout:.0f} s and was killed") from None
    wall = time.monotonic() - started
    if completed.returncode != 0:
        where = f"; see {options.log_file}" if quiet else ""
        raise LoadTestFailed(f"Locust exited with status {completed.returncode}{where}")
    if not options.requests_csv.exists():
        raise LoadTestFailed(f"Locust wrote no per-request CSV at {options.requests_csv} (no request completed?)")
    return RunResult(options, read_records(options.requests_csv), completed.returncode, wall)


def run_web(options: LoadTestOptions, *, web_port: int = 8089) -> int:
    """Start Locust's web UI on http://127.0.0.1:PORT and wait until it exits (Ctrl-C stops it)."""
    options.csv_dir.mkdir(parents=True, exist_ok=True)
    command = locust_command(options, web=True, web_port=web_port)
    print(f"Locust web UI on http://127.0.0.1:{web_port} (Ctrl-C to stop); per-request CSV: {options.requests_csv}")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=_environment())
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait(timeout=30)
