"""Ray Serve's HAProxy mode as the cluster starts it (cluster/haproxy.py), without starting Ray."""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import haproxy

RAY_STYLE_CONFIG = """global
    stats socket /x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind *:8000
backend b
    server r1 127.0.0.1:30000 check
listen stats
  bind *:8404
  stats enable
"""


def test_haproxy_mode_keeps_its_files_in_the_clusters_temp_dir() -> None:
    tmp_path = Path("/tmp/sf-ray-12345678")  # as short as ray_temp_dir() makes it
    env = haproxy.environment(str(tmp_path))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    paths = [value for key, value in env.items() if key.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]
    assert len(paths) == 6
    assert all(Path(p).is_relative_to(tmp_path) for p in paths)


def test_the_log_socket_stays_where_ray_keeps_it_when_the_temp_dir_is_too_deep_for_haproxy() -> None:
    fits = haproxy.environment("/tmp/sf-ray-8ba6a9a8")["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]
    assert len(fits) + 1 + 56 <= 97  # what Ray hands HAProxy: a node-id folder in between
    assert "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH" not in haproxy.environment("/tmp/" + "x" * 60)


def test_every_haproxy_setting_is_one_that_ray_reads() -> None:
    # Ray reads these when its processes start; a misspelt or renamed one would be ignored without a word.
    from ray.serve._private import constants

    source = inspect.getsource(constants)
    for key in haproxy.environment("/tmp/x"):
        assert f'"{key}"' in source, key


def run_wrapper(tmp_path: Path, *args: str) -> tuple[list[str], str]:
    """Run the wrapper in front of a stand-in HAProxy that reports the arguments and config it was given."""
    real = tmp_path / "real-haproxy"
    real.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\nwhile [ "$1" != "-f" ]; do shift; done\necho ---\ncat "$2"\n')
    real.chmod(0o755)
    wrapper = haproxy.write_wrapper(str(tmp_path), real=str(real))
    assert wrapper == Path(haproxy.environment(str(tmp_path))["RAY_SERVE_HAPROXY_BINARY_PATH"])
    done = subprocess.run([str(wrapper), *args], capture_output=True, text=True, timeout=10, check=True)
    argv, _, config = done.stdout.partition("---\n")
    return argv.split(), config


def test_the_wrapper_binds_the_exporter_and_stats_page_to_loopback_and_nothing_else(tmp_path: Path) -> None:
    source = tmp_path / "node" / "haproxy.cfg"
    source.parent.mkdir()
    source.write_text(RAY_STYLE_CONFIG)
    argv, config = run_wrapper(tmp_path, "-db", "-f", str(source), "-dR", "-sf", "123", "456", "-x", "/x/admin.sock")
    copy = str(tmp_path / "node" / "haproxy.loopback.cfg")
    assert argv == ["-db", "-f", copy, "-dR", "-sf", "123", "456", "-x", "/x/admin.sock"]
    binds = re.findall(r"bind (\S+)", config)
    assert binds == ["127.0.0.1:9101", "*:8000", "127.0.0.1:8404"]  # the API keeps the host the config asked for
    assert config.replace("127.0.0.1:9101", ":9101").replace("127.0.0.1:8404", "*:8404") == RAY_STYLE_CONFIG
    assert source.read_text() == RAY_STYLE_CONFIG  # Ray's own file is left as Ray wrote it


def test_every_bind_in_rays_template_is_the_api_or_one_the_wrapper_rewrites() -> None:
    # A new or reworded bind in a later Ray would be exposed on every interface without this failing.
    from ray.serve._private import haproxy_templates

    binds = set(re.findall(r"^\s*bind (.+?)\s*$", haproxy_templates.HAPROXY_CONFIG_TEMPLATE, flags=re.MULTILINE))
    assert binds == {
        "{{ config.frontend_host }}:{{ config.frontend_port }}",
        "{{ config.grpc_frontend_host }}:{{ config.grpc_frontend_port }} proto h2",
        ":{{ config.metrics_port }}",
        "*:{{ config.stats_port }}",
    }
    from ray.serve._private import constants

    assert (constants.RAY_SERVE_HAPROXY_METRICS_PORT, constants.RAY_SERVE_HAPROXY_STATS_PORT) == (
        haproxy.METRICS_PORT,
        haproxy.STATS_PORT,
    )


def test_the_wrapper_runs_rays_bundled_haproxy_even_where_ray_is_pointed_at_a_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapper = haproxy.write_wrapper(str(tmp_path / "first"))
    monkeypatch.setenv(haproxy.BINARY_VARIABLE, str(wrapper))  # as in a process that deployed onto a cluster
    real = haproxy.real_binary()
    assert Path(real).name == "haproxy" and Path(real).is_file()
    assert os.environ[haproxy.BINARY_VARIABLE] == str(wrapper)
    assert f"exec {real} " in haproxy.write_wrapper(str(tmp_path / "second")).read_text()


def test_an_operators_own_haproxy_is_the_one_the_wrapper_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(haproxy.BINARY_VARIABLE, "/opt/haproxy/sbin/haproxy")
    assert haproxy.real_binary() == "/opt/haproxy/sbin/haproxy"


def test_stopping_kills_only_this_clusters_haproxy(tmp_path: Path) -> None:
    # Stand-ins that show as haproxy (argv[0]): one whose config lies under this cluster's temp dir, one elsewhere.
    def stand_in(temp_dir: Path) -> subprocess.Popen[bytes]:
        argv = ["haproxy", "-c", "import time; time.sleep(60)", f"{temp_dir}/haproxy/abc/haproxy.cfg"]
        return subprocess.Popen(argv, executable=sys.executable)

    ours_dir = tmp_path / "ours"
    ours, other = stand_in(ours_dir), stand_in(tmp_path / "other")
    try:
        time.sleep(0.2)  # until their command lines are readable
        assert haproxy.kill(str(ours_dir)) == 1
        assert ours.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()
