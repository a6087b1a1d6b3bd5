import argparse
from dataclasses import dataclass

from loadtests.bench import LevelResult, Report, add_arguments, bounds_problem, markdown, ratios, round_order
from loadtests.bench_goals import DEFAULT_GOALS, Goal, judge


@dataclass
class Level:
    target: str
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None
    round: int = 1


def _run(servefleet_tps: float, ttft_added: float, round_: int = 1, vllm_tps: float = 1000.0) -> list[Level]:
    rows = []
    for streams in (1, 32, 64):
        rows += [
            Level("vllm", streams, vllm_tps, 20.0, round_),
            Level("ray-serve-llm", streams, 300.0, 90.0, round_),
            Level("servefleet", streams, servefleet_tps, 20.0 + ttft_added, round_),
        ]
    return rows


def test_all_goals_met() -> None:
    verdicts = judge(_run(servefleet_tps=950, ttft_added=10))
    assert len(verdicts) == len(DEFAULT_GOALS)
    assert all(v.met for v in verdicts), [v.describe() for v in verdicts]


def test_misses_are_reported_with_the_margin() -> None:
    verdicts = {
        (v.goal.baseline, v.goal.concurrency, v.goal.metric): v
        for v in judge(_run(500, 35))
        if v.goal.target == "servefleet"
    }
    vs_vllm = verdicts[("vllm", 32, "throughput_ratio")]
    assert vs_vllm.met is False and vs_vllm.measured == 0.5
    assert "MISSED" in vs_vllm.describe() and "missed by 0.40x" in vs_vllm.describe()
    assert verdicts[("ray-serve-llm", 32, "throughput_ratio")].met is False  # 500/300 < 2
    ttft = verdicts[("vllm", 1, "ttft_added_ms")]
    assert ttft.met is False and "missed by 15.0 ms" in ttft.describe()


def test_a_baseline_that_did_not_run_is_not_measured_never_met() -> None:
    results = [r for r in _run(950, 10) if r.target != "ray-serve-llm"]
    verdicts = judge(results)
    missing = [v for v in verdicts if v.goal.baseline == "ray-serve-llm"]
    assert missing and all(v.met is None and "not measured" in v.describe() for v in missing)


def test_custom_goal_bounds() -> None:
    goal = Goal("servefleet", "vllm", 32, "throughput_ratio", 0.95)
    assert judge(_run(940, 0), [goal])[0].met is False


def test_rounds_compare_within_a_round_and_judge_the_median() -> None:
    # The machine runs at half speed in round 2: pooled numbers would compare round 2's servefleet with round
    # 1's vLLM; per round the ratios are 0.95, 0.96 and 0.5, whose median is 0.95.
    results = _run(950, 10, 1) + _run(480, 10, 2, vllm_tps=500) + _run(500, 10, 3)
    ratio = next(v for v in judge(results) if v.goal.baseline == "vllm" and v.goal.concurrency == 32)
    assert ratio.measured == 0.95 and ratio.met is True


def test_a_round_missing_a_server_is_left_out_of_the_median() -> None:
    second = [r for r in _run(100, 10, 2) if r.target != "vllm"]
    ratio = next(v for v in judge(_run(950, 10, 1) + second) if v.goal.baseline == "vllm")
    assert ratio.measured == 0.95


def test_rounds_alternate_their_order() -> None:
    targets = ["vllm", "servefleet", "ray-serve-llm"]
    assert round_order(targets, 1) == targets
    assert round_order(targets, 2) == ["ray-serve-llm", "servefleet", "vllm"]
    assert round_order(targets, 3) == targets


def test_ratios_pair_servers_of_the_same_round() -> None:
    report = Report(model="m", max_tokens=8, duration_s=1, levels=[32], rounds=2)
    report.results = [
        _level("vllm", 1000, 1),
        _level("servefleet", 900, 1),
        _level("servefleet", 450, 2),
        _level("vllm", 500, 2),
    ]
    assert [(row["round"], row["throughput_ratio"]) for row in ratios(report)] == [(1, 0.9), (2, 0.9)]
    text = markdown(report)
    assert "| 2 | servefleet | 32 | 0.9x |" in text and "median of the rounds' ratios" in text


def _level(target: str, tps: float, round_: int) -> LevelResult:
    return LevelResult(target, 32, 1.0, 1, 0, int(tps), tps, 1.0, 10.0, 20.0, 5.0, 6.0, round_)


def test_rounds_are_bounded() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert bounds_problem(parser.parse_args(["--rounds", "3"])) is None
    assert bounds_problem(parser.parse_args(["--rounds", "50"])) is not None
    assert bounds_problem(parser.parse_args(["--rounds", "0"])) is not None
