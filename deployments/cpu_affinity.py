"""Pin a process tree to a set of CPUs, every thread of it.

Used by the engine replica to keep vLLM's engine-core and worker processes on the cores given to the engine,
while `servefleet up` keeps Ray and the serving path on the others (``serving_cpus``).
``os.sched_setaffinity(pid)`` pins one thread only (the one whose id is ``pid``), so each thread under
``/proc/PID/task`` is pinned; threads and processes started later inherit the mask of the thread that starts
them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator

import psutil

logger = logging.getLogger(__name__)


def usable_cpus(wanted: Iterable[int]) -> set[int]:
    """The requested CPU ids that this machine has; an empty answer means the config is wrong here. Not this
    process's own mask: the replica runs on the serving CPUs, the engine on others."""
    return set(wanted) & set(range(os.cpu_count() or 1))


def _required(cpus: Iterable[int]) -> set[int]:
    wanted = set(cpus)
    allowed = usable_cpus(wanted)
    if not allowed:
        raise ValueError(f"cpu_affinity {sorted(wanted)} names no CPU this machine has")
    return allowed


def serving_cpus(engine_cpus: Iterable[int], available: Iterable[int]) -> set[int] | None:
    """The CPUs for everything but the engines (Ray, the serving path, HAProxy): the ``available`` ones no
    engine is pinned to. None, leave placement to the OS, when no engine is pinned or they take every CPU."""
    pinned = set(engine_cpus)
    rest = set(available) - pinned
    return rest if pinned and rest else None


@contextlib.contextmanager
def born_on(cpus: Iterable[int] | None) -> Iterator[None]:
    """Processes this thread starts inside the block begin life on ``cpus`` (a child inherits the mask of the
    thread that forks it), so vLLM's engine processes never run on the serving CPUs, not even while they load.
    None does nothing."""
    if cpus is None:
        yield
        return
    allowed = _required(cpus)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, allowed)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


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
    allowed = _required(cpus)
    pids = [child.pid for child in psutil.Process().children(recursive=True)]
    for pid in pids:
        pin_thread_group(pid, allowed)
    logger.info("pinned engine processes %s to CPUs %s", pids, sorted(allowed))
    return pids
