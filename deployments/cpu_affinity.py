"""Pin a process tree to a set of CPUs, every thread of it.

Used by the engine replica to keep vLLM's engine-core and worker processes on the cores given to the engine.
``os.sched_setaffinity(pid)`` pins one thread only (the one whose id is ``pid``), so each thread under
``/proc/PID/task`` is pinned; threads started later inherit the mask of the thread that starts them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import psutil

logger = logging.getLogger(__name__)


def usable_cpus(wanted: Iterable[int]) -> set[int]:
    """The requested CPU ids that this process may run on; an empty answer means the config is wrong here."""
    return set(wanted) & os.sched_getaffinity(0)


def pin_thread_group(pid: int, cpus: set[int]) -> int:
    """Pin every thread of process ``pid``; returns how many were pinned. Threads that exit meanwhile are
    skipped."""
    pinned = 0
    try:
        thread_ids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return 0
    for tid in thread_ids:
        try:
            os.sched_setaffinity(tid, cpus)
            pinned += 1
        except (ProcessLookupError, FileNotFoundError):
            continue
    return pinned


def pin_children(cpus: Iterable[int]) -> list[int]:
    """Pin every descendant process of this one (not this one) to ``cpus``; returns their pids."""
    wanted = sorted(set(cpus))
    allowed = usable_cpus(wanted)
    if not allowed:
        raise ValueError(f"cpu_affinity {wanted} names no CPU this process may use")
    pids = [child.pid for child in psutil.Process().children(recursive=True)]
    for pid in pids:
        pin_thread_group(pid, allowed)
    logger.info("pinned engine processes %s to CPUs %s", pids, sorted(allowed))
    return pids
