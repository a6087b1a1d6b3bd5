"""The CPU split's arithmetic over two process snapshots (pure)."""

from __future__ import annotations

import argparse

import pytest

from loadtests.bench import bounds_problem
from loadtests.cpu_split import ProcessTime, add_arguments, cores_by_label


def test_cores_are_cpu_seconds_per_wall_second_summed_per_label_largest_first() -> None:
    before = {1: ProcessTime("bench/ingress", 10.0), 2: ProcessTime("serve proxy", 5.0), 3: ProcessTime("x", 1.0)}
    after = {1: ProcessTime("bench/ingress", 18.0), 2: ProcessTime("serve proxy", 7.0), 3: ProcessTime("x", 3.0)}
    assert cores_by_label(before, after, 20.0) == [("bench/ingress", 0.4), ("serve proxy", 0.1), ("x", 0.1)]


def test_processes_of_one_label_add_up() -> None:
    before = {1: ProcessTime("idle ray worker", 0.0), 2: ProcessTime("idle ray worker", 0.0)}
    after = {1: ProcessTime("idle ray worker", 3.0), 2: ProcessTime("idle ray worker", 1.0)}
    assert cores_by_label(before, after, 10.0) == [("idle ray worker", 0.4)]


def test_a_process_seen_once_or_whose_pid_was_reused_does_not_count() -> None:
    before = {1: ProcessTime("gone", 5.0), 2: ProcessTime("old", 50.0)}
    after = {2: ProcessTime("new", 1.0), 3: ProcessTime("born", 4.0)}
    assert cores_by_label(before, after, 10.0) == []


def test_runs_are_bounded_like_the_benchmark() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert bounds_problem(parser.parse_args([])) is None
    assert bounds_problem(parser.parse_args(["--duration", "600"])) is not None
    assert bounds_problem(parser.parse_args(["--levels", "500"])) is not None
    args = parser.parse_args(["--coalesce", "10", "400", "--pin-serving", "1", "--direct-ingress"])
    assert args.coalesce == [10.0, 400.0] and args.pin_serving == [1] and args.direct_ingress


@pytest.mark.parametrize("elapsed", [0.5, 2.0])
def test_scale_with_elapsed_time(elapsed: float) -> None:
    before, after = {1: ProcessTime("p", 0.0)}, {1: ProcessTime("p", 1.0)}
    assert cores_by_label(before, after, elapsed) == [("p", 1.0 / elapsed)]
