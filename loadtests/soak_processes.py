"""Name the processes of a Ray cluster for the soak report. Pure: it reads what ``ps`` would show, nothing else.

Ray sets a worker's process title to ``ray::<actor class>``: a Serve replica reads
``ray::ServeReplica:<app>:<deployment>`` (``.method`` appended while a method runs), the HTTP proxy
``ray::ProxyActor``, the controller ``ray::ServeController``, a pooled worker ``ray::IDLE``, the raylet's agents
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``; the dashboard's modules ``ray-dashboard-<Module>-0``.
vLLM titles its engine process ``VLLM::EngineCore``; it is named after the replica above it, so each variant's
engine process can be told apart. The system processes are known by executable or script.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# Script or module in a Python command line -> name, first match wins.
_SCRIPTS = (
    ("dashboard/agent.py", "dashboard agent"),
    ("dashboard/dashboard.py", "dashboard"),
    ("runtime_env/agent/main.py", "runtime env agent"),
    ("log_monitor.py", "log monitor"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ("ray.util.client.server", "ray client server"),
    ("multiprocessing.forkserver", "forkserver"),
    ("multiprocessing.resource_tracker", "resource tracker"),
    ("ray.scripts.scripts", "ray start"),
    ("bin/ray", "ray start"),
)
_EXECUTABLES = {"gcs_server": "gcs_server", "raylet": "raylet"}
_RAY_ACTORS = {
    "ServeController": "serve controller",
    "ProxyActor": "serve proxy",
    "IDLE": "idle ray worker",
    "DashboardAgent": "dashboard agent",
    "RuntimeEnvAgent": "runtime env agent",
}


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str  # the executable's name (psutil's ``name()``)
    cmdline: tuple[str, ...]  # with the process title in the first element where one was set


def base_label(name: str, cmdline: Sequence[str]) -> str:
    """The process's own name in the report, without looking at its parents."""
    title = cmdline[0].strip() if cmdline else ""
    if title.startswith("ray::"):
        words = title.removeprefix("ray::").split()
        actor = (words or ["?"])[0].split(".")[0].split("(")[0]  # "X.method()" while a method runs -> "X"
        if "ServeReplica:" in actor:  # also "SERVE_REPLICA::<id>:ServeReplica:app:dep" while it starts
            _, app, deployment = [*actor[actor.index("ServeReplica:") :].split(":", 2), "?", "?"][:3]
            return f"{app}/{deployment}"
        return _RAY_ACTORS.get(actor, f"ray actor {actor}")
    if title.startswith("VLLM::"):
        return "vllm " + title.removeprefix("VLLM::").split()[0]
    if title.startswith("ray-dashboard-"):  # the dashboard's head modules each run in a subprocess
        return "dashboard " + title.removeprefix("ray-dashboard-").split()[0].rsplit("-", 1)[0]
    if name in _EXECUTABLES:
        return _EXECUTABLES[name]
    joined = " ".join(cmdline)
    for needle, label in _SCRIPTS:
        if needle in joined:
            return label
    return name or "?"


def _is_replica(label: str) -> bool:
    return "/" in label


def label_processes(processes: Iterable[ProcessInfo]) -> dict[int, str]:
    """``{pid: label}``. A process that is not a Ray worker itself but runs below a Serve replica (vLLM's
    engine core, its workers, any helper) is named ``<replica> > <own name>``."""
    by_pid: Mapping[int, ProcessInfo] = {p.pid: p for p in processes}
    own = {pid: base_label(p.name, p.cmdline) for pid, p in by_pid.items()}
    labels = {}
    for pid, label in own.items():
        labels[pid] = label
        if _is_replica(label):
            continue
        seen = {pid}
        parent = by_pid[pid].ppid
        while parent in by_pid and parent not in seen:  # the parent chain, within the sampled set only
            if _is_replica(own[parent]):
                labels[pid] = f"{own[parent]} > {label}"
                break
            seen.add(parent)
            parent = by_pid[parent].ppid
    return labels
