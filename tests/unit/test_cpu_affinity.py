import os
import subprocess
import sys
import time

import pytest

from deployments.cpu_affinity import born_on, pin_children, pin_thread_group, serving_cpus, usable_cpus

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


def test_the_serving_path_gets_the_cpus_no_engine_is_pinned_to() -> None:
    assert serving_cpus([0], {0, 1}) == {1}
    assert serving_cpus([0, 2], range(4)) == {1, 3}
    assert serving_cpus([], {0, 1}) is None  # no engine pinned: the OS places everything
    assert serving_cpus([0], {0}) is None  # one CPU: nothing to keep apart


def test_a_process_started_inside_born_on_begins_on_those_cpus_and_the_thread_returns_to_its_own() -> None:
    before = os.sched_getaffinity(0)
    target = {max(before)}
    with born_on(target):
        process = subprocess.Popen([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
    out, _ = process.communicate(timeout=30)
    assert out.strip() == str(sorted(target))
    assert os.sched_getaffinity(0) == before


def test_born_on_none_changes_nothing() -> None:
    before = os.sched_getaffinity(0)
    with born_on(None):
        assert os.sched_getaffinity(0) == before


def test_usable_cpus_drops_unknown_ids() -> None:
    mine = os.sched_getaffinity(0)
    assert usable_cpus([*mine, 100_000]) == mine


def test_pinning_a_gone_process_pins_nothing() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert pin_thread_group(process.pid, {0}) == 0
