"""The multi-node cluster tooling without starting Ray: the commands each node runs, the autoscaler config (checked
by Ray's own validator), the state file, Serve's REST answer, and how `servefleet up` finds a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import multinode, redis_store
from cluster.cli import attach

FAST = multinode.FAST_FAILURE_DETECTION


def flag(command: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_head_binds_the_second_loopback_address_with_a_head_resource_and_no_engine_slots() -> None:
    command = multinode.head_command(
        node_ip="127.0.0.2",
        port=6500,
        dashboard_port=6501,
        metrics_port=6502,
        agent_port=6503,
        client_port=6504,
        num_cpus=1,
        temp_dir="/tmp/sf-mn-x",
    )
    assert "--head" in command and "--block" in command
    assert flag(command, "node-ip-address") == "127.0.0.2"
    assert flag(command, "dashboard-host") == "127.0.0.2"
    assert json.loads(flag(command, "resources")) == {"head": multinode.HEAD_RESOURCE_AMOUNT}
    assert json.loads(flag(command, "system-config")) == FAST
    # Every port is explicit: two nodes on one address must not both take Ray's defaults.
    for name, port in (("port", 6500), ("dashboard-port", 6501), ("metrics-export-port", 6502)):
        assert flag(command, name) == str(port)
    assert flag(command, "dashboard-agent-listen-port") == "6503"
    assert not any(arg.startswith("--autoscaling-config") for arg in command)


def test_head_with_autoscaler_names_its_config() -> None:
    command = multinode.head_command(
        node_ip="127.0.0.2",
        port=1,
        dashboard_port=2,
        metrics_port=3,
        agent_port=4,
        client_port=5,
        num_cpus=1,
        temp_dir="/t",
        autoscaling_config="/s/a.json",
    )
    assert flag(command, "autoscaling-config") == "/s/a.json"


def test_worker_joins_the_head_with_its_own_cpus_and_engine_slots() -> None:
    command = multinode.worker_command(
        address="127.0.0.2:6500",
        node_ip="127.0.0.2",
        name="worker-2",
        num_cpus=2,
        resources=multinode.worker_resources(3),
        agent_port=7000,
    )
    assert "--head" not in command
    assert flag(command, "address") == "127.0.0.2:6500"
    assert flag(command, "node-ip-address") == "127.0.0.2"
    assert flag(command, "node-name") == "worker-2"
    assert flag(command, "num-cpus") == "2"
    assert json.loads(flag(command, "resources")) == {"engine": 3}
    assert flag(command, "dashboard-agent-listen-port") == "7000"
    assert multinode.worker_resources(0) == {}


def test_autoscaler_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    spec = multinode.AutoscaleSpec(min_workers=0, max_workers=3, idle_timeout_s=12)
    config = multinode.autoscaling_config(
        spec, address="127.0.0.2:6500", node_ip="127.0.0.2", head_cpus=1, worker_cpus=2, engine_slots=1
    )
    validate_config(prepare_config(config))
    provider = config["provider"]
    assert provider["type"] == "external" and provider["module"] == "cluster.fake_provider.LoopbackFakeProvider"
    assert provider["use_node_id_as_ip"] is True  # several nodes share one IP: the autoscaler keys them by id
    assert provider["gcs_address"] == "127.0.0.2:6500" and provider["node_ip_address"] == "127.0.0.2"
    worker = config["available_node_types"][multinode.FAKE_WORKER_TYPE]
    assert worker["resources"] == {"CPU": 2, "engine": 1}
    assert (worker["min_workers"], worker["max_workers"]) == (0, 3)
    assert config["idle_timeout_minutes"] == pytest.approx(0.2)


def test_fake_provider_is_importable_where_rays_autoscaler_looks_for_it() -> None:
    from ray.autoscaler._private.providers import _get_node_provider_cls

    from cluster.fake_provider import LoopbackFakeProvider

    assert _get_node_provider_cls({"type": "external", "module": "cluster.fake_provider.LoopbackFakeProvider"}) is (
        LoopbackFakeProvider
    )


def test_state_file_round_trips(tmp_path: Path) -> None:
    head = multinode.NodeProcess("head", 11, 1, {"head": 1000.0}, "/l/head.log", 1.0)
    worker = multinode.NodeProcess("worker-1", 12, 2, {"engine": 2.0}, "/l/w1.log", 2.0)
    state = multinode.MultiNodeState(
        address="127.0.0.2:1",
        node_ip="127.0.0.2",
        port=1,
        dashboard_port=2,
        metrics_port=3,
        temp_dir="/t",
        state_file=str(tmp_path / "m.json"),
        head=head,
        workers=[worker],
        autoscale=multinode.AutoscaleSpec(max_workers=5),
    )
    multinode._write_state(state)
    assert multinode.read_state(tmp_path / "m.json") == state
    assert state.groups == [12, 11]  # workers are stopped before the head
    assert state.dashboard_url == "http://127.0.0.2:2"


def test_stop_without_a_state_file_touches_nothing(tmp_path: Path) -> None:
    assert multinode.stop(state_file=tmp_path / "none.json") is False


def test_a_stale_state_file_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    head = multinode.NodeProcess("head", 2**22 + 12345, 1, {}, "/l", 0.0)  # no such process group
    multinode._write_state(multinode.MultiNodeState("127.0.0.2:1", "127.0.0.2", 1, 2, 3, "/t", str(path), head=head))
    assert multinode.running(path) is None
    assert not path.exists()


SERVE_ANSWER = {
    "app": {
        "deployments": {
            "engine-a": {
                "target_num_replicas": 3,
                "replicas": [
                    {"replica_id": "r1", "state": "RUNNING", "node_id": "n1", "pid": 1},
                    {"replica_id": "r2", "state": "STARTING", "node_id": "n2", "pid": 2},
                    {"replica_id": "r3", "state": "RUNNING", "node_id": "n2", "pid": 3},
                ],
            },
            "router": {"target_num_replicas": 1, "replicas": []},
        }
    }
}


def test_replica_counts_from_serves_rest_answer() -> None:
    assert multinode.replica_counts(SERVE_ANSWER, "app") == {"engine-a": (2, 3), "router": (0, 1)}
    assert multinode.replica_counts(SERVE_ANSWER, "other") == {}


def test_node_table_lists_each_nodes_replicas() -> None:
    nodes = [
        multinode.NodeView("h" * 8, "head", "127.0.0.2", True, True, {"CPU": 1.0, "head": 1000.0}),
        multinode.NodeView(
            "w" * 8,
            "worker-1",
            "127.0.0.2",
            True,
            False,
            {"CPU": 2.0, "engine": 2.0, "memory": 1e9, "node:127.0.0.2": 1.0},
            [multinode.ReplicaView("app", "engine-a", "r1", "RUNNING", 42)],
        ),
        multinode.NodeView("d" * 8, "worker-2", "127.0.0.2", False, False, {"engine": 2.0}),
    ]
    text = multinode.format_nodes(nodes)
    lines = text.splitlines()
    assert lines[0].startswith("head") and "(no Serve replicas)" in lines[1]
    assert "worker-1" in lines[2] and "engine=2" in lines[2] and "memory" not in lines[2]
    assert "app/engine-a" in lines[3] and "RUNNING" in lines[3] and "pid 42" in lines[3]
    assert "DEAD" in lines[4]


def test_up_attaches_to_an_address_or_falls_back_to_the_local_head(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SERVEFLEET_CACHE", str(tmp_path))
    assert attach(None) is None  # nothing running: `servefleet up` starts its local head as before
    state = attach("127.0.0.2:6500")
    assert state is not None and (state.address, state.node_ip, state.port) == ("127.0.0.2:6500", "127.0.0.2", 6500)
    with pytest.raises(SystemExit):
        attach("no-port")


def test_rays_own_failure_detection_can_be_kept() -> None:
    ports = {"port": 1, "dashboard_port": 2, "metrics_port": 3, "agent_port": 4, "client_port": 5}
    command = multinode.head_command(node_ip="127.0.0.2", num_cpus=1, temp_dir="/t", system_config={}, **ports)
    assert not any(arg.startswith("--system-config") for arg in command)


REDIS = redis_store.RedisProcess(21, "127.0.0.2", 6379, "pw", "/t/redis", "/l/redis.log")


def test_gcs_ft_head_does_not_block_and_passes_the_redis_password() -> None:
    ports = {"port": 1, "dashboard_port": 2, "metrics_port": 3, "agent_port": 4, "client_port": 5}
    command = multinode.head_command(
        node_ip="127.0.0.2", num_cpus=1, temp_dir="/t", block=False, redis_password="pw", **ports
    )
    # A blocking `ray start` kills its whole node when the GCS dies with SIGKILL, the very crash to survive.
    assert "--block" not in command and "--head" in command
    assert flag(command, "redis-password") == "pw"
    env = multinode.gcs_ft_environment(REDIS, namespace="servefleet-x")
    assert env == {"RAY_REDIS_ADDRESS": "127.0.0.2:6379", "RAY_external_storage_namespace": "servefleet-x"}


def test_redis_binds_loopback_with_a_password_and_reads_no_system_config() -> None:
    command = redis_store.redis_command(
        "/usr/bin/redis-server", host="127.0.0.2", port=7000, password="pw", data_dir="/d", log_file="/l"
    )
    assert command[0] == "/usr/bin/redis-server" and not command[1].endswith(".conf")
    pairs = dict(zip(command[1::2], command[2::2], strict=True))
    assert pairs["--bind"] == "127.0.0.2" and pairs["--port"] == "7000" and pairs["--requirepass"] == "pw"
    assert pairs["--dir"] == "/d" and pairs["--daemonize"] == "no" and pairs["--save"] == ""
    assert redis_store.ping("127.0.0.2", multinode.free_port("127.0.0.2"), "pw") is False  # nothing listens


def test_gcs_ft_state_round_trips_and_stops_the_restarted_gcs_and_redis_too(tmp_path: Path) -> None:
    head = multinode.NodeProcess("head", 11, 1, {"head": 1000.0}, "/l/head.log", 1.0)
    worker = multinode.NodeProcess("worker-1", 12, 2, {"engine": 2.0}, "/l/w1.log", 2.0)
    state = multinode.MultiNodeState(
        "127.0.0.2:1", "127.0.0.2", 1, 2, 3, "/t", str(tmp_path / "m.json"), head, [worker], redis=REDIS, gcs_group=31
    )
    multinode._write_state(state)
    assert multinode.read_state(tmp_path / "m.json") == state
    assert state.gcs_ft and state.groups == [12, 11, 31, 21]


def test_restarting_a_gcs_without_redis_is_refused(tmp_path: Path) -> None:
    head = multinode.NodeProcess("head", 2**22 + 12345, 1, {}, "/l", 0.0)
    state = multinode.MultiNodeState("127.0.0.2:1", "127.0.0.2", 1, 2, 3, "/t", str(tmp_path / "m.json"), head=head)
    with pytest.raises(RuntimeError, match="--gcs-ft"):
        multinode.restart_gcs(state)
