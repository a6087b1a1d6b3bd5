import os
import subprocess
import sys
import time

import pytest

from deployments.cpu_affinity import pin_children, pin_thread_group, usable_cpus

# A child with a second thread, so the test sees that every thread is pinned, not only the main one.
_CHILD = "import threading, time; threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); time.sleep(30)"


def _thread_affinities(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pytest.fixture
def child() -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", _CHILD])
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{process.pid}/task")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    yield process
    process.kill()
    process.wait()


def test_pin_children_pins_every_thread_of_a_child(child: subprocess.Popen[bytes]) -> None:
    before = os.sched_getaffinity(0)
    target = min(before)
    pids = pin_children([target])
    assert child.pid in pids
    affinities = _thread_affinities(child.pid)
    assert len(affinities) >= 2
    assert all(cpus == {target} for cpus in affinities)
    assert os.sched_getaffinity(0) == before  # the replica itself stays where it was


def test_pin_children_refuses_cpus_this_process_cannot_use() -> None:
    with pytest.raises(ValueError, match="names no CPU"):
        pin_children(iter([100_000]))


def test_usable_cpus_drops_unknown_ids() -> None:
    mine = os.sched_getaffinity(0)
    assert usable_cpus([*mine, 100_000]) == mine


def test_pinning_a_gone_process_pins_nothing() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert pin_thread_group(process.pid, {0}) == 0
