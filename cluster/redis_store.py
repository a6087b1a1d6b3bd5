"""The Redis that backs the head's GCS when ``servefleet cluster up --gcs-ft`` asks for fault tolerance.

Ray keeps the GCS tables (nodes, actors, placement groups, the internal KV where Serve checkpoints its
controller) in memory unless ``RAY_REDIS_ADDRESS`` names a Redis: then a GCS that restarts reloads them and the
cluster carries on. This module runs Debian's ``redis-server`` for one cluster: on loopback, on a free port,
with a password made for the run, in a process group of its own that the cluster's state file records, so that
``cluster down`` stops it with the nodes.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install Debian's redis-server (scripts/setup.sh does it as root: apt-get install redis-server)"


@dataclass(frozen=True)
class RedisProcess:
    """One redis-server we started: ``pid`` is also its process group."""

    pid: int
    host: str
    port: int
    password: str
    data_dir: str
    log_file: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(f"redis-server not found: {INSTALL_HINT}")
    return path


def redis_command(binary: str, *, host: str, port: int, password: str, data_dir: str, log_file: str) -> list[str]:
    """``redis-server`` with every setting on the command line: no config file of the system's is read."""
    return [
        binary,
        "--bind",
        host,
        "--port",
        str(port),
        "--requirepass",
        password,  # loopback is shared by every local user; the GCS passes it on with --redis-password
        "--dir",
        data_dir,
        # An append-only file, so that a Redis restart would not lose the GCS tables either; no RDB snapshots,
        # whose fork would take a second CPU from a two-core machine.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        log_file,
    ]


def ping(host: str, port: int, password: str, timeout_s: float = 1.0) -> bool:
    """AUTH then PING in Redis's wire protocol: no client library needed for one health check."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_resp("AUTH", password) + _resp("PING"))
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    break
                answer += chunk
    except OSError:
        return False
    return answer == b"+OK\r\n+PONG\r\n"


def _resp(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return b"".join([f"*{len(encoded)}\r\n".encode(), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)])


def start(*, host: str, port: int, data_dir: Path, log_file: Path, cwd: Path, timeout_s: float = 15) -> RedisProcess:
    """Start redis-server and wait until it answers; on failure nothing is left running."""
    data_dir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    command = redis_command(
        redis_binary(), host=host, port=port, password=password, data_dir=str(data_dir), log_file=str(log_file)
    )
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd
    )
    deadline = time.monotonic() + timeout_s
    while not ping(host, port, password):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
            process.wait()
            raise RuntimeError(f"redis-server did not come up on {host}:{port}; see {log_file}")
        time.sleep(0.1)
    return RedisProcess(process.pid, host, port, password, str(data_dir), str(log_file))
