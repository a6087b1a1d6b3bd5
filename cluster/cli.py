"""``servefleet cluster up|status|down|add-node|kill-node|restart-gcs``: the local multi-node cluster
(cluster/multinode.py), and how ``servefleet up`` / ``status`` attach to it."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from cluster.local import ClusterState


def attach(address: str | None) -> ClusterState | None:
    """The cluster ``servefleet up``/``status`` should use instead of starting a local head: the one at
    ``address`` (``--address``), else a running multi-node cluster, else None (the local head as before)."""
    from cluster import multinode

    state = multinode.running()
    if state is not None and (address is None or address == state.address):
        return ClusterState(
            pid=state.head.pid,
            address=state.address,
            node_ip=state.node_ip,
            port=state.port,
            dashboard_port=state.dashboard_port,
            temp_dir=state.temp_dir,
            log_file=state.head.log_file,
            started_at=state.started_at,
            metrics_port=state.metrics_port,
        )
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--address must be HOST:PORT of a Ray head's GCS, not {address!r}")
    return ClusterState(
        pid=0,
        address=address,
        node_ip=host,
        port=int(port),
        dashboard_port=0,
        temp_dir="<the head's Ray temp dir>",
        log_file="<the head's log>",
        started_at=0.0,
    )


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from cluster import multinode

    autoscale = None
    if args.autoscale:
        autoscale = multinode.AutoscaleSpec(
            min_workers=args.nodes, max_workers=args.max_nodes, idle_timeout_s=args.idle_timeout
        )
    mode = f"Ray's autoscaler, {args.nodes} to {args.max_nodes} worker nodes" if autoscale else f"{args.nodes} workers"
    print(f"starting a head and {mode} on {multinode.NODE_IP} (each worker: {args.worker_cpus:g} CPUs, ", end="")
    print(f"{args.engine_slots:g} `{multinode.ENGINE_RESOURCE}` slots)...")
    try:
        state = multinode.start(
            nodes=args.nodes,
            worker_cpus=args.worker_cpus,
            engine_slots=args.engine_slots,
            head_cpus=args.head_cpus,
            port=args.port,
            dashboard_port=args.dashboard_port,
            autoscale=autoscale,
            gcs_ft=args.gcs_ft,
            timeout_s=args.timeout,
        )
    except (RuntimeError, TimeoutError) as error:
        print(f"cluster up failed: {error}", file=sys.stderr)
        return 1
    _print_state(state)
    print("\ndeploy onto it with: servefleet up --detach --config cluster/configs/multinode-sim.yaml")
    print("stop it with:        servefleet cluster down")
    return 0


def _print_state(state: Any) -> None:
    from cluster import multinode

    print(f"cluster {state.address}  dashboard {state.dashboard_url}  metrics {state.node_ip}:{state.metrics_port}")
    if state.autoscale is not None:
        spec = state.autoscale
        print(
            f"autoscaler: Ray's, fake multi-node provider, {spec.min_workers}..{spec.max_workers} worker nodes, "
            f"idle nodes removed after {spec.idle_timeout_s:g}s"
        )
    if state.redis is not None:
        print(f"GCS fault tolerance: tables in redis-server {state.redis.address} (pid {state.redis.pid})")
    print(f"logs: {state.head.log_file} (head); Ray's: {state.temp_dir}/session_latest/logs/")
    print(multinode.format_nodes(multinode.describe(state)))


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from cluster import multinode

    state = multinode.running()
    if state is None:
        print("no multi-node cluster is running (start one with: servefleet cluster up --nodes 2)")
        return 1
    _print_state(state)
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from cluster import multinode

    if multinode.stop():
        print("stopped the multi-node cluster")
    else:
        print("no multi-node cluster was running")
    return 0


def cmd_cluster_add_node(args: argparse.Namespace) -> int:
    from cluster import multinode

    state = multinode.running()
    if state is None:
        print("no multi-node cluster is running", file=sys.stderr)
        return 1
    state = multinode.add_worker(state, name=args.name)
    print(f"added {state.workers[-1].name}")
    return 0


def cmd_cluster_kill_node(args: argparse.Namespace) -> int:
    from cluster import multinode

    state = multinode.running()
    if state is None:
        print("no multi-node cluster is running", file=sys.stderr)
        return 1
    pid = multinode.kill_raylet(state, args.name)
    print(f"killed the raylet of {args.name} (pid {pid}) with SIGKILL")
    return 0


def cmd_cluster_restart_gcs(args: argparse.Namespace) -> int:
    from cluster import multinode

    state = multinode.running()
    if state is None:
        print("no multi-node cluster is running", file=sys.stderr)
        return 1
    try:
        state, restart = multinode.restart_gcs(state, down_s=args.down)
    except RuntimeError as error:
        print(f"restart-gcs failed: {error}", file=sys.stderr)
        return 1
    print(
        f"killed gcs_server {restart.killed_pid} with SIGKILL; gcs_server {restart.started_pid} listens again "
        f"{restart.down_s:.2f}s later"
    )
    return 0


def register(commands: Any) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the dashboard polls are not news
    cluster = commands.add_parser("cluster", help="a local multi-node Ray cluster: a head and worker nodes")
    sub = cluster.add_subparsers(dest="cluster_command", required=True)

    up = sub.add_parser("up", help="start a head and N worker nodes (separate raylets) on 127.0.0.2")
    up.add_argument("--nodes", type=int, default=2, help="worker nodes (with --autoscale: the fewest kept)")
    up.add_argument("--worker-cpus", type=float, default=2, help="Ray CPUs each worker node offers")
    up.add_argument("--engine-slots", type=float, default=2, help="`engine` resource each worker node offers")
    up.add_argument("--head-cpus", type=float, default=1, help="Ray CPUs the head offers")
    up.add_argument("--port", type=int, default=None, help="the head's GCS port (default: a free one)")
    up.add_argument("--dashboard-port", type=int, default=None, help="the dashboard's port (default: a free one)")
    up.add_argument("--autoscale", action="store_true", help="let Ray's autoscaler add and remove worker nodes")
    up.add_argument("--max-nodes", type=int, default=3, help="with --autoscale: the most worker nodes")
    up.add_argument("--idle-timeout", type=float, default=30, help="with --autoscale: seconds before an idle node goes")
    up.add_argument("--gcs-ft", action="store_true", help="keep the GCS tables in a Redis of its own (head restarts)")
    up.add_argument("--timeout", type=float, default=180, help="seconds to wait for every node")
    up.set_defaults(func=cmd_cluster_up)

    status = sub.add_parser("status", help="nodes, alive or dead, and the Serve replicas on each")
    status.set_defaults(func=cmd_cluster_status)

    down = sub.add_parser("down", help="stop exactly the processes `cluster up` started")
    down.set_defaults(func=cmd_cluster_down)

    add = sub.add_parser("add-node", help="start one more worker node")
    add.add_argument("--name", default=None, help="its name (default: the next worker-N)")
    add.set_defaults(func=cmd_cluster_add_node)

    kill = sub.add_parser("kill-node", help="SIGKILL a worker node's raylet, as a machine failure would")
    kill.add_argument("name", help="the worker's name, e.g. worker-1")
    kill.set_defaults(func=cmd_cluster_kill_node)

    restart = sub.add_parser("restart-gcs", help="SIGKILL the head's GCS and start it again (needs --gcs-ft)")
    restart.add_argument("--down", type=float, default=0.0, help="seconds to leave the GCS down before the restart")
    restart.set_defaults(func=cmd_cluster_restart_gcs)
