"""Fuzz the running app through its own OpenAPI schema with schemathesis: whatever the body, no 5xx and no
hang. Bounded: a fixed number of generated cases per operation, each with a timeout; max_tokens stays tiny so
the real engine's work per case is small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_schemathesis_finds_no_server_errors(running_app, tmp_path: Path):
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{running_app.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--request-timeout",
        "30",
        "--seed",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--exclude-method",
        "GET",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
