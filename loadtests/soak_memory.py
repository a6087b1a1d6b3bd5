"""Read the memory of every process of one Ray cluster on this machine (psutil), and append it to a CSV.

Which processes: the session of a cluster this run started (``ray start --block`` runs in a session of its own;
Ray puts each worker in a process group of its own, but the session stays), or, for a cluster it attached to,
everything below the parent of the GCS server that listens on the cluster's port. Never any other cluster's.

USS (memory only this process maps) is what a leak grows; PSS adds each process's share of shared pages; RSS
counts shared libraries in full in every process. All three come from one read of ``/proc/<pid>/smaps_rollup``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import psutil

from loadtests.soak_analysis import MemorySample
from loadtests.soak_processes import ProcessInfo, label_processes

CSV_FIELDS = ("t_s", "pid", "label", "rss", "uss", "pss")


def session_members(sid: int) -> list[int]:
    """Every process of session ``sid``: its leader and all it started, whatever their process groups."""
    # Plain getsid over /proc, not psutil.process_iter: this machine runs hundreds of other processes, and
    # building a psutil object for each one made a sweep take seconds while the load thread held the GIL.
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    members.append(int(entry))
    return members


def end_session(sid: int, *, timeout_s: float) -> int:
    """Wait for session ``sid`` to empty after its head was stopped, then SIGKILL what is left, one pid at a time
    (Ray workers are not in the head's process group, so stopping the group may leave one behind). Returns how
    many were killed."""
    deadline = time.monotonic() + timeout_s
    while (left := session_members(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def gcs_parent(port: int) -> int | None:
    """The parent of the GCS server listening on ``port`` (``ray start`` or a driver's ``ray.init``)."""
    flag = f"--gcs_server_port={port}"
    for process in psutil.process_iter(["name", "cmdline", "ppid"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] == "gcs_server" and flag in (process.info["cmdline"] or []):
                return int(process.info["ppid"])
    return None


def tree_members(root: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(root)
        return [root, *(child.pid for child in process.children(recursive=True))]
    return []


def process_info(process: psutil.Process) -> ProcessInfo:
    """What ``label_processes`` needs to know of a live process (raises ``psutil.Error`` if it is gone)."""
    return ProcessInfo(process.pid, process.ppid(), process.name(), tuple(process.cmdline()))


def sweep(pids: Iterable[int], t_s: float) -> list[MemorySample]:
    """One sample per process still alive; processes that end mid-sweep, zombies and our own are skipped."""
    infos: list[ProcessInfo] = []
    memory: dict[int, tuple[int, int, int]] = {}
    for pid in pids:
        if pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            full = process.memory_full_info()
            infos.append(process_info(process))
            memory[pid] = (full.rss, full.uss, getattr(full, "pss", full.uss))
    labels = label_processes(infos)
    return [MemorySample(t_s, pid, labels[pid], *memory[pid]) for pid in sorted(memory) if pid in labels]


class SampleWriter:
    """``samples.csv``, flushed after every sweep so that an interrupted run keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(CSV_FIELDS)

    def write(self, samples: Sequence[MemorySample]) -> None:
        for s in samples:
            self._csv.writerow((f"{s.t_s:.1f}", s.pid, s.label, s.rss, s.uss, s.pss))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_samples(path: Path) -> list[MemorySample]:
    """Read a ``samples.csv`` back (to re-analyse a run with other thresholds)."""
    with path.open(newline="") as file:
        return [
            MemorySample(float(r["t_s"]), int(r["pid"]), r["label"], int(r["rss"]), int(r["uss"]), int(r["pss"]))
            for r in csv.DictReader(file)
        ]
