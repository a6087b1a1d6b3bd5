"""The single-node cluster's start-up settings (cluster/local.py), without starting Ray."""

from __future__ import annotations

from cluster import local


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
