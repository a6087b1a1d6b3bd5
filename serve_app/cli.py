"""``servefleet``: build the models, bring the local cluster up and down, deploy, and show status."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.config import ConfigError, ServeFleetConfig, load_config

logger = logging.getLogger("servefleet")


def _load(args: argparse.Namespace) -> ServeFleetConfig:
    overrides: dict[str, Any] = {}
    server = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None))) if v}
    if server:
        overrides["server"] = server
    return load_config(args.config, overrides=overrides)


def cmd_models_build(args: argparse.Namespace) -> int:
    from serve_app import model_builder

    names = args.names or sorted(model_builder.BUILTIN_MODELS)
    for name in names:
        path = model_builder.build_model(name, force=args.force)
        print(f"{name}: {path}")
    return 0


def _build_builtin(config: ServeFleetConfig) -> None:
    from serve_app import model_builder

    for variant in config.variants:
        if variant.builtin_name is not None:
            print(f"  model {variant.name}: {model_builder.build_model(variant.builtin_name)}")


def cmd_up(args: argparse.Namespace) -> int:
    from cluster import local
    from cluster.cli import attach
    from serve_app import control

    config = _load(args)
    print("building built-in models (skipped when up to date)...")
    _build_builtin(config)
    # A running `servefleet cluster up` (or --address) is deployed onto; otherwise a local head is started.
    attached = attach(args.address)
    already = attached or local.running_cluster()
    state = attached or local.start_head(
        port=args.ray_port, dashboard_port=args.dashboard_port, metrics_port=args.metrics_port
    )
    started_here = already is None
    print(f"ray cluster: {state.address} ({'started' if started_here else 'already running'}); log {state.log_file}")
    control.connect(state.address, node_ip=state.node_ip if attached else None)
    print(f"deploying app {config.app_name!r} with variants {', '.join(v.name for v in config.variants)}...")
    url = control.base_url(config)
    try:
        # Several nodes on one machine: one HTTP proxy (on the head), or they would all bind the same port.
        control.deploy(config, proxy_location="HeadOnly" if attached else None)
        ready = control.wait_ready(url, args.ready_timeout)
    except Exception as error:
        print(f"deploy failed: {error}", file=sys.stderr)
        print(f"logs: {state.temp_dir}/session_latest/logs/serve/", file=sys.stderr)
        if started_here and not args.detach:
            local.stop()
        return 1
    print(f"ready: {ready}")
    print(f"\nOpenAI-compatible API at {url}/v1 (model '{config.routing.public_model}' or a variant name)")
    print("try:")
    print(
        f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"model": "{config.routing.public_model}", "messages": [{{"role": "user", '
        f'"content": "Hello"}}], "max_tokens": 32}}\''
    )
    print(f"logs: {state.log_file} and {state.temp_dir}/session_latest/logs/ (serve/ has the replicas')")
    if state.metrics_port is not None:
        print(f"metrics (Prometheus format): http://{state.node_ip}:{state.metrics_port}/metrics")
    if args.detach:
        print("detached; stop it with: " + ("servefleet cluster down" if attached else "servefleet down"))
        return 0
    print("serving in the foreground; Ctrl-C stops it.")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("\nstopping...")
    try:
        control.delete(config.app_name)
    finally:
        if started_here:
            local.stop()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from cluster import local

    if local.stop():
        print("stopped the local cluster")
    else:
        print("no local cluster was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    from cluster import local
    from cluster.cli import attach
    from serve_app import control

    config = _load(args)
    attached = attach(None)
    state = attached or local.running_cluster()
    if state is None:
        print("no local cluster is running (start one with: servefleet up)")
        return 1
    control.connect(state.address, node_ip=state.node_ip if attached else None)
    status = control.app_status(config.app_name)
    print(f"cluster {state.address}, app {config.app_name}: {status.status if status else 'not deployed'}")
    if status is not None:
        for deployment in status.deployments:
            replicas = ", ".join(f"{k.lower()}={v}" for k, v in deployment.replicas.items()) or "none"
            print(f"  {deployment.name:<22} {deployment.status:<10} replicas: {replicas}")
            if deployment.message:
                print(f"    {deployment.message}")
    url = control.base_url(config)
    try:
        response = httpx.get(f"{url}/readyz", timeout=5)
        print(f"health: {url}/readyz -> {response.status_code} {response.text}")
        _print_feedback()
    except httpx.HTTPError as error:
        print(f"health: {url}/readyz unreachable ({error!r})")
        return 1
    return 0 if response.status_code == 200 else 1


def _print_feedback() -> None:
    from serve_app.feedback import FeedbackStore, default_feedback_path

    if not default_feedback_path().exists():
        print("feedback: none yet (POST /v1/feedback)")
        return
    with FeedbackStore() as store:
        summary = store.summary()
    for variant, entry in sorted(summary.items()):
        print(f"feedback {variant}: {entry.count} ratings, mean {entry.mean:.2f} (1-5)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="servefleet", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", type=Path, default=None, help="YAML config (default: the built-in one)")
        return p

    models = commands.add_parser("models", help="manage the built-in models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    build = models_commands.add_parser("build", help="build the built-in models into the cache folder")
    build.add_argument("names", nargs="*", help="which models (default: all)")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.set_defaults(func=cmd_models_build)

    up = with_config(commands.add_parser("up", help="start a local Ray cluster and serve the app on it"))
    up.add_argument("--host", default=None, help="override server.host")
    up.add_argument("--port", type=int, default=None, help="override server.port")
    up.add_argument("--detach", action="store_true", help="return once ready and leave it running")
    up.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for readiness")
    up.add_argument("--ray-port", type=int, default=6390, help="the Ray head's GCS port")
    up.add_argument("--dashboard-port", type=int, default=8265, help="the Ray dashboard's port (loopback)")
    up.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus metrics port (8080)")
    up.add_argument("--address", default=None, help="deploy onto this Ray cluster (default: `cluster up`'s, if any)")
    up.set_defaults(func=cmd_up)

    down = commands.add_parser("down", help="stop the local cluster started by `servefleet up`")
    down.set_defaults(func=cmd_down)

    status = with_config(commands.add_parser("status", help="variants, replicas and health"))
    status.add_argument("--host", default=None)
    status.add_argument("--port", type=int, default=None)
    status.set_defaults(func=cmd_status)

    from loadtests.cli import register

    register(commands)  # loadtest, gate, bench
    from cluster.cli import register as register_cluster

    register_cluster(commands)  # cluster up, status, down, add-node, kill-node
    return root


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
