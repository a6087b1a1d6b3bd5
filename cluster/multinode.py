"""A multi-node Ray cluster on one machine: a head and N worker nodes, each a raylet of its own, on loopback.

Every node binds to ``127.0.0.2``, not ``127.0.0.1``: Ray rewrites 127.0.0.1 to the machine's external address,
where the head's GCS does not listen, so worker nodes could never join (FACTS.md). Each node is one
``ray start --block`` in a process group of its own; the state file (``multinode.json`` in the cache's state
folder, apart from ``cluster/local.py``'s ``cluster.json``) records those groups, and ``stop`` signals exactly
them, nothing else on the machine (never ``ray stop``).

Resources steer placement. Worker nodes carry ``engine`` slots (a custom resource), the head carries ``head``:
a variant that asks for ``resources: {engine: 1}`` lands on worker nodes only, and Serve's default spread
scheduling puts its replicas on different nodes; light deployments that ask for a sliver of ``head`` stay next
to the HTTP proxy (``pools.resources`` in the app config).

With ``autoscale`` the head also runs Ray's own autoscaler (monitor) with the fake multi-node provider
(``cluster.fake_provider``): worker nodes are then started and stopped by Ray when demand cannot be placed or
nodes sit idle, not by this module.

With ``gcs_ft`` the head's GCS keeps its tables in a Redis of its own (``cluster.redis_store``), so that a GCS
that dies can be started again (``restart_gcs``) and the cluster, Serve included, carries on. The head is then
a plain ``ray start --head`` that exits once the head is up, not ``--block``: a blocking ``ray start`` kills
every process of its node as soon as any of them exits with a code other than 0 or SIGTERM, so a crashed GCS
would take the head's raylet, dashboard, Serve controller and HTTP proxy with it (Ray 2.60,
``ray/scripts/scripts.py``, the ``--block`` loop). Its processes stay in the group ``head.pid``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cluster import redis_store
from cluster.local import live_group_members, ray_environment
from serve_app.paths import cache_dir, logs_dir, state_dir

logger = logging.getLogger(__name__)

STATE_FILE = "multinode.json"
NODE_IP = "127.0.0.2"
ENGINE_RESOURCE = "engine"
HEAD_RESOURCE = "head"
# The head offers this much of `head`; a light replica asks for a tiny fraction of it.
HEAD_RESOURCE_AMOUNT = 1000.0
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # Serve passes small objects; 30% of RAM per node would be absurd here.
# How fast the GCS declares a silent raylet dead: a ping every second, dead after 3 missed (Ray's defaults,
# 3 s x 5 with a 10 s timeout, leave requests to a dead node's replicas stalled for 15-30 s).
FAST_FAILURE_DETECTION: dict[str, int] = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
FAKE_WORKER_TYPE = "ray.worker.servefleet"


_HANDED_OUT: set[int] = set()


def free_port(host: str = "") -> int:
    """A TCP port nothing listens on right now (on every address when ``host`` is empty), and never one this
    process was handed before: the kernel may hand a port that was just closed out again, and a node started
    with one port for two components fails ("trying to use a port number ... used by other components")."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port that was not handed out before")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class NodeProcess:
    """One node this module started: ``pid`` is its ``ray start --block`` and the id of its process group."""

    name: str
    pid: int
    num_cpus: float
    resources: dict[str, float]
    log_file: str
    started_at: float


@dataclass(frozen=True)
class AutoscaleSpec:
    """Ray's autoscaler over fake worker nodes of one type (each ``worker_cpus`` CPUs, ``engine_slots``)."""

    min_workers: int = 0
    max_workers: int = 3
    idle_timeout_s: float = 10.0
    upscaling_speed: float = 1.0


@dataclass(frozen=True)
class MultiNodeState:
    address: str  # the GCS: what drivers and `servefleet up --address` connect to
    node_ip: str
    port: int
    dashboard_port: int
    metrics_port: int
    temp_dir: str
    state_file: str
    head: NodeProcess
    workers: list[NodeProcess] = field(default_factory=list)
    worker_cpus: float = 2.0
    engine_slots: float = 2.0
    autoscale: AutoscaleSpec | None = None
    started_at: float = 0.0
    redis: redis_store.RedisProcess | None = None  # with gcs_ft: where the GCS keeps its tables
    gcs_group: int | None = None  # a GCS started again by `restart_gcs` runs in a process group of its own

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.node_ip}:{self.dashboard_port}"

    @property
    def gcs_ft(self) -> bool:
        return self.redis is not None

    @property
    def groups(self) -> list[int]:
        """Process groups, workers first (stopped before the head, so they do not log a lost GCS), Redis last."""
        groups = [w.pid for w in self.workers] + [self.head.pid]
        if self.gcs_group is not None:
            groups.append(self.gcs_group)
        if self.redis is not None:
            groups.append(self.redis.pid)
        return groups

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MultiNodeState:
        data = dict(data)
        data["head"] = NodeProcess(**data["head"])
        data["workers"] = [NodeProcess(**w) for w in data.get("workers", [])]
        if data.get("autoscale") is not None:
            data["autoscale"] = AutoscaleSpec(**data["autoscale"])
        if data.get("redis") is not None:
            data["redis"] = redis_store.RedisProcess(**data["redis"])
        return cls(**data)


def default_state_file() -> Path:
    return state_dir() / STATE_FILE


def read_state(state_file: Path | None = None) -> MultiNodeState | None:
    path = state_file or default_state_file()
    if not path.exists():
        return None
    return MultiNodeState.from_json(json.loads(path.read_text()))


def _write_state(state: MultiNodeState) -> None:
    path = Path(state.state_file)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def running(state_file: Path | None = None) -> MultiNodeState | None:
    """The multi-node cluster this project started, if its head answers. A head that is gone leaves a stale
    state file: whatever of its workers is left is stopped and the file removed. A head still starting (its
    process alive, its port not yet open) is left alone and reads as not running."""
    state = read_state(state_file)
    if state is None:
        return None
    if not live_group_members(state.head.pid):
        stop(state_file=Path(state.state_file))
        return None
    return state if _port_open(state.node_ip, state.port) else None


def temp_dir_for(state_file: Path) -> Path:
    """Ray's temp dir (short: it holds unix sockets), one per state file, apart from the local cluster's."""
    key = hashlib.blake2b(str(state_file.resolve()).encode(), digest_size=4).hexdigest()
    path = Path(tempfile.gettempdir()) / f"sf-mn-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------- commands


def _ray_start(*, block: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        *(["--block"] if block else []),
        "--disable-usage-stats",
    ]


def head_command(
    *,
    node_ip: str,
    port: int,
    dashboard_port: int,
    metrics_port: int,
    agent_port: int,
    client_port: int,
    num_cpus: float,
    temp_dir: str,
    autoscaling_config: str | None = None,
    system_config: Mapping[str, Any] | None = None,
    block: bool = True,
    redis_password: str | None = None,
) -> list[str]:
    """``ray start --head`` for the head: ``head`` resource, dashboard and fixed ports on ``node_ip``. With
    ``redis_password`` the GCS uses the Redis that ``gcs_ft_environment`` names."""
    command = [
        *_ray_start(block=block),
        "--head",
        f"--node-ip-address={node_ip}",
        f"--port={port}",
        "--node-name=head",
        f"--num-cpus={num_cpus:g}",
        "--num-gpus=0",
        f"--resources={json.dumps({HEAD_RESOURCE: HEAD_RESOURCE_AMOUNT})}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={temp_dir}",
        "--include-dashboard=true",
        f"--dashboard-host={node_ip}",
        f"--dashboard-port={dashboard_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--metrics-export-port={metrics_port}",
        f"--ray-client-server-port={client_port}",
    ]
    system_config = FAST_FAILURE_DETECTION if system_config is None else system_config
    if system_config:
        command.append(f"--system-config={json.dumps(dict(system_config), separators=(',', ':'))}")
    if autoscaling_config is not None:
        command.append(f"--autoscaling-config={autoscaling_config}")
    if redis_password is not None:
        command.append(f"--redis-password={redis_password}")
    return command


def gcs_ft_environment(redis: redis_store.RedisProcess, namespace: str) -> dict[str, str]:
    """What turns GCS fault tolerance on in Ray 2.60 (``ray/_private/node.py`` reads ``RAY_REDIS_ADDRESS``; the
    GCS binary reads every ``RAY_<setting>``). The namespace keeps this cluster's keys apart in Redis, as
    KubeRay does with the RayCluster's id."""
    return {"RAY_REDIS_ADDRESS": redis.address, "RAY_external_storage_namespace": namespace}


def worker_command(
    *, address: str, node_ip: str, name: str, num_cpus: float, resources: Mapping[str, float], agent_port: int
) -> list[str]:
    """``ray start`` for one worker node: its own raylet, CPUs and custom resources, on ``node_ip``."""
    return [
        *_ray_start(),
        f"--address={address}",
        f"--node-ip-address={node_ip}",
        f"--node-name={name}",
        f"--num-cpus={num_cpus:g}",
        "--num-gpus=0",
        f"--resources={json.dumps(dict(resources))}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--dashboard-agent-listen-port={agent_port}",
    ]


def worker_resources(engine_slots: float) -> dict[str, float]:
    return {ENGINE_RESOURCE: engine_slots} if engine_slots > 0 else {}


def autoscaling_config(
    spec: AutoscaleSpec, *, address: str, node_ip: str, head_cpus: float, worker_cpus: float, engine_slots: float
) -> dict[str, Any]:
    """Ray autoscaler config for the fake multi-node provider (Ray's ``fake_multi_node/example.yaml``, which the
    2.60 wheel does not ship, with our provider: nodes on ``node_ip``, joining the GCS at ``address``)."""
    return {
        "cluster_name": "servefleet-local",
        "max_workers": spec.max_workers,
        "upscaling_speed": spec.upscaling_speed,
        "idle_timeout_minutes": spec.idle_timeout_s / 60,
        "provider": {
            "type": "external",
            "module": "cluster.fake_provider.LoopbackFakeProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": address,
            "node_ip_address": node_ip,
            "object_store_memory": OBJECT_STORE_BYTES,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": head_cpus, HEAD_RESOURCE: HEAD_RESOURCE_AMOUNT},
                "node_config": {},
                "max_workers": 0,
            },
            FAKE_WORKER_TYPE: {
                "resources": {"CPU": worker_cpus, **worker_resources(engine_slots)},
                "node_config": {},
                "min_workers": spec.min_workers,
                "max_workers": spec.max_workers,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


# ---------------------------------------------------------------------------------------------- start / stop


def _spawn(command: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cache_dir()
        )


def _environment(temp_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = ray_environment({**os.environ, "RAY_TMPDIR": str(temp_dir)})
    env.update(extra or {})
    return env


def start(
    *,
    nodes: int = 2,
    worker_cpus: float = 2,
    engine_slots: float = 2,
    head_cpus: float = 1,
    port: int | None = None,
    dashboard_port: int | None = None,
    metrics_port: int | None = None,
    autoscale: AutoscaleSpec | None = None,
    node_ip: str = NODE_IP,
    state_file: Path | None = None,
    system_config: Mapping[str, Any] | None = None,
    gcs_ft: bool = False,
    timeout_s: float = 120,
) -> MultiNodeState:
    """Start a head and ``nodes`` worker nodes (or, with ``autoscale``, a head whose autoscaler starts them) and
    wait until every node is alive in the GCS. On any failure, everything started so far is stopped.

    ``system_config``: Ray's internal settings for the head; None means ``FAST_FAILURE_DETECTION``, ``{}``
    Ray's own defaults. ``gcs_ft``: back the GCS with a Redis of its own (see the module's docstring)."""
    state_file = (state_file or default_state_file()).resolve()
    existing = read_state(state_file)
    if existing is not None and live_group_members(existing.head.pid):
        raise RuntimeError(
            f"a multi-node cluster is already running (or starting) at {existing.address}: see {state_file}, "
            "or stop it with `servefleet cluster down`"
        )
    stop(state_file=state_file)  # leftovers of a cluster whose head died, if any
    port = port or free_port()
    dashboard_port = dashboard_port or free_port()
    metrics_port = metrics_port or free_port()
    if _port_open(node_ip, port):
        raise RuntimeError(f"port {node_ip}:{port} is taken")
    temp_dir = temp_dir_for(state_file)
    address = f"{node_ip}:{port}"
    log_dir = logs_dir()
    extra_env: dict[str, str] = {}
    config_path: str | None = None
    if autoscale is not None:
        config = autoscaling_config(
            autoscale,
            address=address,
            node_ip=node_ip,
            head_cpus=head_cpus,
            worker_cpus=worker_cpus,
            engine_slots=engine_slots,
        )
        config_file = state_file.with_name(state_file.stem + "-autoscaler.json")
        config_file.write_text(json.dumps(config, indent=2))
        config_path = str(config_file)
        # RAY_FAKE_CLUSTER: the fake provider refuses to run without it and the head takes the fake head id.
        extra_env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head_log = log_dir / f"{state_file.stem}-head.log"
    redis: redis_store.RedisProcess | None = None
    if gcs_ft:
        redis = redis_store.start(
            host=node_ip,
            port=free_port(node_ip),
            data_dir=temp_dir / "redis",
            log_file=log_dir / f"{state_file.stem}-redis.log",
            cwd=cache_dir(),
        )
        extra_env.update(gcs_ft_environment(redis, namespace=f"servefleet-{temp_dir.name}"))
    command = head_command(
        node_ip=node_ip,
        port=port,
        dashboard_port=dashboard_port,
        metrics_port=metrics_port,
        agent_port=free_port(),
        client_port=free_port(),
        num_cpus=head_cpus,
        temp_dir=str(temp_dir),
        autoscaling_config=config_path,
        system_config=system_config,
        block=not gcs_ft,
        redis_password=None if redis is None else redis.password,
    )
    try:
        head_process = _spawn(command, _environment(temp_dir, extra_env), head_log)
    except BaseException:
        if redis is not None:
            _kill_group(redis.pid, signal.SIGKILL)
        raise
    head = NodeProcess(
        name="head",
        pid=head_process.pid,
        num_cpus=head_cpus,
        resources={HEAD_RESOURCE: HEAD_RESOURCE_AMOUNT},
        log_file=str(head_log),
        started_at=time.time(),
    )
    state = MultiNodeState(
        address=address,
        node_ip=node_ip,
        port=port,
        dashboard_port=dashboard_port,
        metrics_port=metrics_port,
        temp_dir=str(temp_dir),
        state_file=str(state_file),
        head=head,
        worker_cpus=worker_cpus,
        engine_slots=engine_slots,
        autoscale=autoscale,
        started_at=time.time(),
        redis=redis,
    )
    _write_state(state)  # from here on `stop` can clean up, whatever fails next
    try:
        deadline = time.monotonic() + timeout_s
        while not _port_open(node_ip, port):
            # A head without --block (gcs_ft) exits 0 once its processes are up.
            code = head_process.poll()
            if code is not None and (code != 0 or not gcs_ft):
                raise RuntimeError(f"ray head exited with code {code}; see {head_log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not come up in {timeout_s:.0f}s; see {head_log}")
            time.sleep(0.5)
        wait_for_nodes(state, 1, timeout_s=max(deadline - time.monotonic(), 10))
        if autoscale is None:
            # One at a time: on a small machine, raylets registering together with a head that is still
            # starting time out (seen on 2 cores: "The current node timed out during startup").
            for index in range(1, nodes + 1):
                state = add_worker(state, name=f"worker-{index}", timeout_s=max(deadline - time.monotonic(), 30))
        else:
            wait_for_nodes(state, 1 + autoscale.min_workers, timeout_s=max(deadline - time.monotonic(), 10))
    except BaseException:
        stop(state_file=state_file)
        raise
    return state


def add_worker(
    state: MultiNodeState,
    *,
    name: str | None = None,
    num_cpus: float | None = None,
    engine_slots: float | None = None,
    wait: bool = True,
    timeout_s: float = 60,
) -> MultiNodeState:
    """Start one more worker node and record it in the state file; returns the new state."""
    existing = {w.name for w in state.workers}
    if name is None:
        name = next(f"worker-{i}" for i in range(1, len(existing) + 2) if f"worker-{i}" not in existing)
    elif name in existing:
        raise ValueError(f"a node named {name!r} was already started")
    cpus = state.worker_cpus if num_cpus is None else num_cpus
    resources = worker_resources(state.engine_slots if engine_slots is None else engine_slots)
    log_file = logs_dir() / f"{Path(state.state_file).stem}-{name}.log"
    command = worker_command(
        address=state.address,
        node_ip=state.node_ip,
        name=name,
        num_cpus=cpus,
        resources=resources,
        agent_port=free_port(),
    )
    process = _spawn(command, _environment(Path(state.temp_dir)), log_file)
    worker = NodeProcess(name, process.pid, cpus, resources, str(log_file), time.time())
    state = replace(state, workers=[*state.workers, worker])
    _write_state(state)
    if wait:

        def joined(nodes: list[NodeView]) -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited with code {process.returncode}; see {log_file}")
            return any(n.name == name and n.alive for n in nodes)

        wait_for_nodes(state, joined, timeout_s=timeout_s)
    return state


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_groups_gone(groups: Iterable[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(live_group_members(g) for g in groups):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, ProcessLookupError):
        os.waitpid(pid, os.WNOHANG)


def stop(*, state_file: Path | None = None, timeout_s: float = 5) -> bool:
    """Stop every node this module started (its process groups only). False if no cluster was recorded."""
    path = (state_file or default_state_file()).resolve()
    state = read_state(path)
    if state is None:
        return False
    groups = state.groups
    for pgid in groups:
        _reap(pgid)
        _kill_group(pgid, signal.SIGTERM)
    if not _wait_groups_gone(groups, timeout_s):
        for pgid in groups:
            _kill_group(pgid, signal.SIGKILL)
        _wait_groups_gone(groups, 10)
    for pgid in groups:
        _reap(pgid)
    path.unlink(missing_ok=True)
    path.with_name(path.stem + "-autoscaler.json").unlink(missing_ok=True)
    return True


def _pid_gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def gcs_server_pid(state: MultiNodeState) -> int | None:
    """The head's gcs_server: in the head's process group, or in its own after a restart."""
    import psutil

    for group in (state.gcs_group, state.head.pid):
        for pid in live_group_members(group) if group is not None else []:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).name() == "gcs_server":
                    return pid
    return None


@dataclass(frozen=True)
class GcsRestart:
    killed_pid: int
    started_pid: int
    down_s: float  # SIGKILL to the new GCS listening on the cluster's port again


def restart_gcs(
    state: MultiNodeState, *, down_s: float = 0.0, timeout_s: float = 60
) -> tuple[MultiNodeState, GcsRestart]:
    """SIGKILL the head's GCS, as a crash would, wait ``down_s``, and start it again with the same command line
    and environment (as Ray's own tests do with ``kill_gcs_server``/``start_gcs_server``). The new GCS runs in a
    process group of its own, recorded in the state file, so ``stop`` still finds it.

    Only with ``gcs_ft``: a GCS without Redis would come back empty, knowing none of the cluster's nodes and
    actors."""
    import psutil

    if not state.gcs_ft:
        raise RuntimeError("this cluster keeps its GCS in memory: start it with `servefleet cluster up --gcs-ft`")
    pid = gcs_server_pid(state)
    if pid is None:
        raise RuntimeError("the head has no running gcs_server")
    process = psutil.Process(pid)
    argv, env = process.cmdline(), process.environ()
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    deadline = killed_at + timeout_s
    while not _pid_gone(pid) or _port_open(state.node_ip, state.port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gcs_server {pid} did not go after SIGKILL")
        time.sleep(0.05)
    if state.gcs_group is not None:
        _reap(state.gcs_group)  # the GCS just killed, if this process started it
    time.sleep(down_s)
    log_file = logs_dir() / f"{Path(state.state_file).stem}-gcs-restart.log"
    new = _spawn(argv, env, log_file)
    state = replace(state, gcs_group=new.pid)
    _write_state(state)
    while not _port_open(state.node_ip, state.port):
        if new.poll() is not None:
            raise RuntimeError(f"the restarted gcs_server exited with code {new.returncode}; see {log_file}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the restarted gcs_server did not listen within {timeout_s:.0f}s; see {log_file}")
        time.sleep(0.05)
    return state, GcsRestart(pid, new.pid, time.monotonic() - killed_at)


def raylet_pid(node: NodeProcess) -> int | None:
    """The raylet of a node this module started (found in its process group), or None if it is not running."""
    import psutil

    for pid in live_group_members(node.pid):
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).name() == "raylet":
                return pid
    return None


def kill_raylet(state: MultiNodeState, name: str) -> int:
    """SIGKILL the raylet of worker ``name``, as a machine failure would; returns its pid. The node's
    ``ray start --block`` then takes the rest of the node down with it."""
    worker = next((w for w in state.workers if w.name == name), None)
    if worker is None:
        raise KeyError(f"no worker named {name!r} in {state.state_file}")
    pid = raylet_pid(worker)
    if pid is None:
        raise RuntimeError(f"worker {name!r} has no running raylet")
    os.kill(pid, signal.SIGKILL)
    return pid


# ---------------------------------------------------------------------------------------------- inspection


@dataclass(frozen=True)
class ReplicaView:
    app: str
    deployment: str
    replica: str
    state: str  # Serve's replica state: STARTING, RUNNING, STOPPING, ...
    pid: int | None


@dataclass(frozen=True)
class NodeView:
    node_id: str
    name: str
    ip: str
    alive: bool
    is_head: bool
    resources: dict[str, float]
    replicas: list[ReplicaView] = field(default_factory=list)


def serve_applications(state: MultiNodeState, *, timeout_s: float = 10) -> dict[str, Any]:
    """Serve's own view of its applications (deployments, target and actual replicas, each replica's node and
    state), from its REST API on the head's dashboard: no Ray driver needed. Empty while Serve is not running."""
    import httpx

    response = httpx.get(f"{state.dashboard_url}/api/serve/applications/", timeout=timeout_s)
    response.raise_for_status()
    return dict(response.json().get("applications") or {})


def replica_counts(applications: Mapping[str, Any], app: str) -> dict[str, tuple[int, int]]:
    """``{deployment: (running replicas, target replicas)}`` of one app in ``serve_applications``' answer."""
    deployments = (applications.get(app) or {}).get("deployments") or {}
    return {
        name: (sum(r.get("state") == "RUNNING" for r in d.get("replicas") or []), int(d.get("target_num_replicas", 0)))
        for name, d in deployments.items()
    }


def describe(state: MultiNodeState, *, timeout_s: float = 10) -> list[NodeView]:
    """Nodes, alive or dead (Ray's state API), and the Serve replicas on each (Serve's REST API), both served by
    the head's dashboard."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=state.dashboard_url, limit=1000, timeout=int(timeout_s), raise_on_missing_output=False)
    try:
        applications = serve_applications(state, timeout_s=timeout_s)
    except Exception:  # Serve not started yet (the route answers once the dashboard's Serve module is up)
        applications = {}
    replicas: dict[str, list[ReplicaView]] = {}
    for app_name, app in applications.items():
        for deployment_name, deployment in (app.get("deployments") or {}).items():
            for replica in deployment.get("replicas") or []:
                view = ReplicaView(
                    app_name,
                    deployment_name,
                    replica.get("replica_id", "?"),
                    replica.get("state", "?"),
                    replica.get("pid"),
                )
                replicas.setdefault(replica.get("node_id") or "", []).append(view)
    views = [
        NodeView(
            node_id=node.node_id,
            name=node.node_name or node.node_ip,
            ip=node.node_ip,
            alive=node.state == "ALIVE",
            is_head=bool(node.is_head_node),
            resources={k: float(v) for k, v in (node.resources_total or {}).items()},
            replicas=sorted(replicas.get(node.node_id, []), key=lambda r: (r.app, r.deployment, r.replica)),
        )
        for node in nodes
    ]
    # Head first, then alive workers by name, then dead nodes.
    return sorted(views, key=lambda v: (not v.is_head, not v.alive, v.name, v.node_id))


def wait_for_nodes(state: MultiNodeState, expected: Any, *, timeout_s: float = 60) -> list[NodeView]:
    """Wait until ``expected`` holds: an int (that many alive nodes) or a predicate over ``describe``."""
    check = expected if callable(expected) else (lambda nodes: sum(n.alive for n in nodes) >= expected)
    deadline = time.monotonic() + timeout_s
    last: list[NodeView] | str = "no answer"
    while time.monotonic() < deadline:
        if not live_group_members(state.head.pid):
            raise RuntimeError(f"the ray head exited; see {state.head.log_file}")
        try:
            nodes = describe(state, timeout_s=5)
        except Exception as error:  # the dashboard takes a few seconds to come up
            last = repr(error)
        else:
            if check(nodes):
                return nodes
            last = nodes
        time.sleep(1)
    raise TimeoutError(f"cluster nodes not as expected after {timeout_s:.0f}s; last: {last}")


def format_nodes(nodes: Iterable[NodeView]) -> str:
    """A plain-text table: one block per node, its replicas below it."""
    lines = []
    for node in nodes:
        role = "head" if node.is_head else "worker"
        custom = {k: v for k, v in node.resources.items() if not k.startswith(("node:", "memory", "object_store"))}
        shown = ", ".join(f"{k}={v:g}" for k, v in sorted(custom.items()))
        lines.append(
            f"{node.name:<10} {role:<6} {'alive' if node.alive else 'DEAD':<5} {node.ip:<10} "
            f"{node.node_id[-8:]}  {shown}"
        )
        for replica in node.replicas:
            lines.append(
                f"    {replica.app}/{replica.deployment:<22} {replica.replica:<10} {replica.state:<9} pid {replica.pid}"
            )
        if node.alive and not node.replicas:
            lines.append("    (no Serve replicas)")
    return "\n".join(lines)
