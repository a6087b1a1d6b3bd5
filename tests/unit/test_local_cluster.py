"""The single-node cluster's start-up settings (cluster/local.py), without starting Ray."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster import local


def test_haproxy_mode_keeps_its_files_in_the_clusters_temp_dir(tmp_path: Path) -> None:
    env = local.haproxy_environment(str(tmp_path))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    paths = [value for key, value in env.items() if key.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]
    assert len(paths) == 4
    assert all(Path(p).is_relative_to(tmp_path) for p in paths)


def test_every_haproxy_setting_is_one_that_ray_reads() -> None:
    # Ray reads these when its processes start; a misspelt or renamed one would be ignored without a word.
    from ray.serve._private import constants

    source = inspect.getsource(constants)
    for key in local.haproxy_environment("/tmp/x"):
        assert f'"{key}"' in source, key


def test_a_state_file_from_before_the_frontend_setting_reads_as_the_ray_proxy() -> None:
    state = local.ClusterState(
        pid=1,
        address="127.0.0.1:6390",
        node_ip="127.0.0.1",
        port=6390,
        dashboard_port=8265,
        temp_dir="/tmp/x",
        log_file="/tmp/x/log",
        started_at=0.0,
    )
    assert state.frontend == "ray-proxy"


def test_stopping_kills_only_this_clusters_haproxy(tmp_path: Path) -> None:
    # Stand-ins that show as haproxy (argv[0]): one whose config lies under this cluster's temp dir, one elsewhere.
    def stand_in(temp_dir: Path) -> subprocess.Popen[bytes]:
        argv = ["haproxy", "-c", "import time; time.sleep(60)", f"{temp_dir}/haproxy/abc/haproxy.cfg"]
        return subprocess.Popen(argv, executable=sys.executable)

    ours_dir = tmp_path / "ours"
    ours, other = stand_in(ours_dir), stand_in(tmp_path / "other")
    try:
        time.sleep(0.2)  # until their command lines are readable
        assert local.kill_haproxy(str(ours_dir)) == 1
        assert ours.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for process in (ours, other):
            process.kill()
            process.wait()
