"""The runner, the CLI and one end-to-end Locust run against a fake OpenAI SSE server on 127.0.0.1.

The fake (``FakeOpenAISSEServer``) stands in for the real stack; a real-stack load test lives elsewhere.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from loadtests import cli, run
from loadtests.records import RequestRecord, write_records
from loadtests.run import LoadTestFailed, LoadTestOptions, RunResult, locust_command, run_headless

# ---------------------------------------------------------------------------------------------------------------
# A fake OpenAI streaming server, loopback only. Every 5th request is a 503; every 7th streams an error event.


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeOpenAISSEServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.bodies.append(body)
        n = next(self.server.counter)
        variant = self.headers.get("x-servefleet-variant") or ("tiny-v1" if n % 2 else "tiny-v2")
        if n % 5 == 0:
            payload = b'{"error":{"message":"overloaded","type":"overloaded"}}'
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-servefleet-variant", variant)
        self.send_header("x-request-id", f"fake-{n}")
        self.end_headers()
        time.sleep(self.server.ttft_s)
        for i in range(self.server.tokens):
            if n % 7 == 0 and i == 2:
                self._event({"error": {"message": "engine went away", "type": "internal_error"}})
                break
            delta = {"role": "assistant", "content": f"w{i}"} if i == 0 else {"content": f" w{i}"}
            self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            time.sleep(self.server.itl_s)
        else:
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
            self._event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": self.server.tokens}})
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, payload: dict) -> None:
        self._chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class FakeOpenAISSEServer(ThreadingHTTPServer):
    """A stand-in for the servefleet API: streams ``tokens`` chunks after ``ttft_s``, ``itl_s`` apart."""

    daemon_threads = True

    def __init__(self, *, ttft_s: float = 0.05, itl_s: float = 0.01, tokens: int = 6) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.ttft_s, self.itl_s, self.tokens = ttft_s, itl_s, tokens
        self.counter = itertools.count(1)
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake_server():
    server = FakeOpenAISSEServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------------------------------------
# Options and command lines (pure)


def test_options_refuse_a_non_loopback_host_and_out_of_bounds_runs():
    with pytest.raises(ValidationError, match="only loopback hosts are allowed"):
        LoadTestOptions(host="http://10.1.2.3:8000")
    with pytest.raises(ValidationError, match="users"):
        LoadTestOptions(host="http://127.0.0.1:8000", users=65)
    with pytest.raises(ValidationError, match="run time"):
        LoadTestOptions(host="http://127.0.0.1:8000", run_time_s=7200)
    with pytest.raises(ValidationError, match="unknown profile"):
        LoadTestOptions(host="http://127.0.0.1:8000", profile="soak")


def test_headless_command_is_bounded_and_pins_the_variant(tmp_path):
    options = LoadTestOptions(
        host="http://127.0.0.1:8000/", users=8, spawn_rate=2, run_time_s=90, variant="tiny-v2", csv_dir=tmp_path
    )
    command = locust_command(options, quiet=True)
    assert command[:3] == [sys.executable, "-m", "locust"]
    pairs = dict(itertools.pairwise(command))  # each flag -> the word after it
    assert pairs["-f"].endswith("loadtests/locustfile.py")
    assert pairs["--host"] == "http://127.0.0.1:8000"
    assert pairs["-u"] == "8" and pairs["-r"] == "2" and pairs["--run-time"] == "90s"
    assert pairs["--sf-variant"] == "tiny-v2" and pairs["--sf-profile"] == "steady"
    assert pairs["--csv"] == str(tmp_path / "run")
    assert pairs["--sf-requests-csv"] == str(tmp_path / "run_requests.csv")
    assert pairs["--exit-code-on-error"] == "0"
    assert "--headless" in command and "--only-summary" in command


def test_web_command_binds_loopback_and_is_not_headless(tmp_path):
    command = locust_command(LoadTestOptions(host="http://localhost:8000", csv_dir=tmp_path), web=True, web_port=9999)
    assert "--headless" not in command
    assert command[command.index("--web-host") + 1] == "127.0.0.1"
    assert command[command.index("--web-port") + 1] == "9999"
    assert "--sf-variant" not in command  # routed by weight when no variant is pinned


# ---------------------------------------------------------------------------------------------------------------
# run_headless with a stand-in for subprocess.run


def record(variant: str, ttft: float, i: int = 0) -> RequestRecord:
    return RequestRecord(
        start_time=1000 + i,
        status=200,
        ok=True,
        requested_variant=variant,
        variant=variant,
        ttft_s=ttft,
        itl_s=ttft / 10,
        e2e_s=ttft * 5,
        output_tokens=40,
    )


def test_run_headless_collects_the_per_request_csv_and_drops_stale_ones(tmp_path):
    options = LoadTestOptions(host="http://127.0.0.1:8000", run_time_s=5, csv_dir=tmp_path)
    write_records(options.requests_csv, [record("stale", 9.9)])
    calls = []

    def fake_subprocess_run(command, **kwargs):
        calls.append((command, kwargs))
        write_records(options.requests_csv, [record("tiny-v1", 0.1), record("tiny-v2", 0.2, 1)])
        return SimpleNamespace(returncode=0)

    result = run_headless(options, runner=fake_subprocess_run)
    assert [r.variant for r in result.records] == ["tiny-v1", "tiny-v2"]
    ((_, kwargs),) = calls
    assert kwargs["timeout"] == 5 + run.STOP_TIMEOUT_S + run.START_GRACE_S
    assert kwargs["cwd"] == run.REPO_ROOT
    assert not any(k.startswith("SERVEFLEET_LOADTEST_") for k in kwargs["env"])


def test_run_headless_reports_a_crash_a_timeout_and_a_missing_csv(tmp_path):
    options = LoadTestOptions(host="http://127.0.0.1:8000", run_time_s=5, csv_dir=tmp_path)
    with pytest.raises(LoadTestFailed, match="status 1"):
        run_headless(options, runner=lambda *a, **k: SimpleNamespace(returncode=1))

    def too_slow(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    with pytest.raises(LoadTestFailed, match="ran past"):
        run_headless(options, runner=too_slow)
    with pytest.raises(LoadTestFailed, match="no per-request CSV"):
        run_headless(options, runner=lambda *a, **k: SimpleNamespace(returncode=0))


# ---------------------------------------------------------------------------------------------------------------
# The CLI


def project_style_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servefleet")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_register_adds_loadtest_and_gate_with_their_options():
    parser = project_style_parser()
    args = parser.parse_args(
        ["loadtest", "--profile", "spike", "--users", "3", "--run-time", "2m", "--variant", "tiny-v1"]
    )
    assert (args.func, args.profile, args.users, args.run_time, args.variant) == (
        cli.cmd_loadtest,
        "spike",
        3,
        120.0,
        "tiny-v1",
    )
    args = parser.parse_args(["gate", "--baseline", "tiny-v1", "--candidate", "tiny-v2", "--out", "x"])
    assert args.func is cli.cmd_gate and args.out == Path("x") and args.host == "http://127.0.0.1:8000"
    with pytest.raises(SystemExit):
        parser.parse_args(["loadtest", "--profile", "soak"])


def test_cli_import_and_help_stay_light():
    code = (
        "import sys, argparse, loadtests.cli as c\n"
        "p = argparse.ArgumentParser(); c.register(p.add_subparsers())\n"
        "p.format_help()\n"
        "print(sorted(m for m in ('locust', 'gevent', 'scipy', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=run.REPO_ROOT)
    assert out.stdout.strip() == "[]"


def test_loadtest_command_refuses_a_remote_host_before_starting_locust(capsys, monkeypatch):
    monkeypatch.setattr(run, "run_headless", lambda *a, **k: pytest.fail("Locust must not start"))
    args = project_style_parser().parse_args(["loadtest", "--host", "http://192.168.0.10:8000"])
    assert args.func(args) == 2
    assert "only loopback hosts are allowed" in capsys.readouterr().err


def fake_runs(slowdown: float):
    """A stand-in for run_headless: 40 requests served by the pinned variant, the candidate ``slowdown`` slower."""

    def run_headless_stand_in(options, **kwargs):
        rng = random.Random(options.label)
        scale = slowdown if options.label == "candidate" else 1.0
        rows = [record(options.variant, rng.lognormvariate(-1, 0.2) * scale, i) for i in range(40)]
        write_records(options.requests_csv, rows)
        return RunResult(options, rows, 0, 1.0)

    return run_headless_stand_in


@pytest.mark.parametrize(("slowdown", "code", "word"), [(1.0, 0, "PASS"), (2.0, 1, "FAIL")])
def test_gate_command_writes_verdict_report_and_plots(tmp_path, monkeypatch, capsys, slowdown, code, word):
    monkeypatch.setattr(run, "run_headless", fake_runs(slowdown))
    out = tmp_path / "gate"
    args = project_style_parser().parse_args(
        ["gate", "--baseline", "tiny-v1", "--candidate", "tiny-v2", "--out", str(out), "--run-time", "10"]
    )
    assert args.func(args) == code
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["passed"] is (code == 0)
    assert verdict["baseline"] == "tiny-v1" and verdict["candidate"] == "tiny-v2"
    for name in ("report.md", "ttft_cdf.png", "itl_cdf.png", "throughput.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"verdict: {word}" in printed


def test_gate_command_refuses_a_bad_slo_file(tmp_path, capsys):
    slo = tmp_path / "slo.yaml"
    slo.write_text("ttft_p95_max_s: fast\n")
    args = project_style_parser().parse_args(["gate", "--baseline", "a", "--candidate", "b", "--slo", str(slo)])
    assert args.func(args) == 2
    assert "ttft_p95_max_s" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# End to end: real Locust (a subprocess) against the fake server


@pytest.mark.slow
def test_locust_user_measures_streams_from_the_fake_server(tmp_path, fake_server):
    options = LoadTestOptions(host=fake_server.url, users=2, run_time_s=4, csv_dir=tmp_path, seed=3)
    started = time.monotonic()
    result = run_headless(options, quiet=True)
    assert time.monotonic() - started < 15

    records = result.records
    assert len(records) >= 8
    good = [r for r in records if r.ok]
    assert {r.variant for r in good} == {"tiny-v1", "tiny-v2"}
    for r in good:
        assert 0.05 <= r.ttft_s < 1.0  # the fake waits 50 ms before the first token
        assert 0.008 <= r.itl_s < 0.1  # and 10 ms between tokens
        assert r.output_tokens == 6 and r.chunks == 6 and r.finish_reason == "length"
        assert r.e2e_s >= r.ttft_s + 5 * 0.01
        assert r.request_id.startswith("fake-")
    failed = [r for r in records if not r.ok]
    assert any(r.status == 503 and "overloaded" in r.error for r in failed)
    assert any(r.status == 200 and "engine went away" in r.error for r in failed)

    # The same seeded prompt sequence, from index 0.
    assert sorted(r.prompt_index for r in records)[:4] == [0, 1, 2, 3]
    assert fake_server.bodies[0]["stream_options"] == {"include_usage": True}

    # Locust's own stats carry the LLM latencies per variant, and the HTTP failures.
    with options.stats_csv.open() as file:
        stats = {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}
    for kind in ("ttft", "itl", "e2e"):
        for variant in ("tiny-v1", "tiny-v2"):
            assert int(stats[(kind, variant)]["Request Count"]) >= 1
    assert 40 <= float(stats[("ttft", "tiny-v1")]["Median Response Time"]) < 1000
    http = stats[("POST", "/v1/chat/completions")]
    assert int(http["Request Count"]) == len(records)
    assert int(http["Failure Count"]) == len(failed)


@pytest.mark.slow
def test_locust_refuses_a_remote_host_even_when_started_by_hand(tmp_path):
    options = LoadTestOptions(host="http://127.0.0.1:9", run_time_s=2, csv_dir=tmp_path)
    command = locust_command(options)
    command[command.index("--host") + 1] = "http://10.0.0.1:8000"
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=run.REPO_ROOT)
    assert out.returncode != 0
    assert "only loopback hosts are allowed" in out.stderr
    assert not options.requests_csv.exists()
