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
    frontend = config.frontends()[0]
    if config.server.frontend == "haproxy" and attached:
        print(
            "server.frontend haproxy is for a single-node cluster (servefleet up alone); "
            "set server.frontend: ray-proxy (or auto) to deploy onto this one",
            file=sys.stderr,
        )
        return 2
    if already is not None and (problem := _frontend_mismatch(already.frontend, config)) is not None:
        print(problem, file=sys.stderr)
        return 2
    state = attached or local.start_head(
        port=args.ray_port,
        dashboard_port=args.dashboard_port,
        metrics_port=args.metrics_port,
        frontend=frontend,
        engine_cpus=config.engine_cpus(),
    )
    local.export_frontend_environment(state)
    started_here = already is None
    print(f"ray cluster: {state.address} ({'started' if started_here else 'already running'}); log {state.log_file}")
    if state.serving_cpus:
        print(f"Ray and the serving path on CPUs {state.serving_cpus}, engines on their engine.cpu_affinity")
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
    from serve_app import deploy_history

    deploy_history.record(config)
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
    shown = status.status if status else "not deployed"
    print(f"cluster {state.address} (frontend {state.frontend}), app {config.app_name}: {shown}")
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
        _print_feedback(config.feedback.path)
    except httpx.HTTPError as error:
        print(f"health: {url}/readyz unreachable ({error!r})")
        return 1
    return 0 if response.status_code == 200 else 1


def _frontend_mismatch(running: str, config: ServeFleetConfig) -> str | None:
    if running in config.frontends():
        return None
    return (
        f"the running cluster was started for server.frontend {running!r}, the config allows "
        f"{' or '.join(repr(f) for f in config.frontends())} (server.frontend {config.server.frontend!r}); "
        "Ray reads it only at start-up: servefleet down, then up again"
    )


def _deploy_running(config: ServeFleetConfig, timeout_s: float) -> int:
    """Apply ``config`` to the running cluster: Serve starts new replicas where anything changed and drains the
    old ones only once the new are up, so requests keep being served throughout."""
    from cluster import local
    from serve_app import control

    state = local.running_cluster()
    if state is None:
        print("no local cluster is running (start one with: servefleet up)", file=sys.stderr)
        return 1
    if (problem := _frontend_mismatch(state.frontend, config)) is not None:
        print(problem, file=sys.stderr)
        return 2
    local.export_frontend_environment(state)
    control.connect(state.address)
    control.deploy(config)
    ready = control.wait_ready(control.base_url(config), timeout_s)
    print(f"deployed {config.app_name!r}: variants {', '.join(f'{v.name} {v.weight:g}%' for v in config.variants)}")
    print(f"ready: {ready}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from serve_app import deploy_history

    config = load_config(args.file)
    code = _deploy_running(config, args.ready_timeout)
    if code == 0:
        deploy_history.record(config)
        print("recorded; `servefleet rollback` returns to the config deployed before this one")
    return code


def cmd_rollback(args: argparse.Namespace) -> int:
    from serve_app import deploy_history

    before = deploy_history.previous()
    if before is None:
        print("nothing to roll back to: fewer than two deploys recorded", file=sys.stderr)
        return 1
    code = _deploy_running(before, args.ready_timeout)
    if code == 0:
        deploy_history.drop_newest()
        print("rolled back to the previous config")
    return code


def cmd_rollout(args: argparse.Namespace) -> int:
    import json

    from cluster import local
    from serve_app import control

    config = _load(args)
    if config.rollout is None:
        print("this config has no rollout section (see README: Canary rollout)", file=sys.stderr)
        return 1
    state = local.running_cluster()
    if state is None:
        print("no local cluster is running (start one with: servefleet up)", file=sys.stderr)
        return 1
    control.connect(state.address)
    driver = control.blocking_handle("rollout", config.app_name)
    result = getattr(driver, args.action).remote().result(timeout_s=30)
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok", True) else 1


def _print_feedback(path: str | None) -> None:
    from serve_app.feedback import FeedbackStore, default_feedback_path

    if not Path(path or default_feedback_path()).exists():
        print("feedback: none yet (POST /v1/feedback)")
        return
    with FeedbackStore(path) as store:
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

    deploy = commands.add_parser("deploy", help="apply a changed config to the running cluster (zero downtime)")
    deploy.add_argument("file", type=Path, help="the new config YAML")
    deploy.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for readiness")
    deploy.set_defaults(func=cmd_deploy)
    rollback = commands.add_parser("rollback", help="redeploy the config that was deployed before the current one")
    rollback.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for readiness")
    rollback.set_defaults(func=cmd_rollback)

    rollout = with_config(commands.add_parser("rollout", help="watch, promote or abort the canary rollout"))
    rollout.add_argument("action", choices=["status", "promote", "abort"])
    rollout.set_defaults(func=cmd_rollout)

    down = commands.add_parser("down", help="stop the local cluster started by `servefleet up`")
    down.set_defaults(func=cmd_down)

    status = with_config(commands.add_parser("status", help="variants, replicas and health"))
    status.add_argument("--host", default=None)
    status.add_argument("--port", type=int, default=None)
    status.set_defaults(func=cmd_status)

    from loadtests.cli import register

    register(commands)  # loadtest, gate, bench, soak
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
