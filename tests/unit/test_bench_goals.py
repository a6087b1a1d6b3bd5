from dataclasses import dataclass

from loadtests.bench_goals import DEFAULT_GOALS, Goal, judge


@dataclass
class Level:
    target: str
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float | None


def _run(servefleet_tps: float, ttft_added: float) -> list[Level]:
    rows = []
    for streams in (1, 32, 64):
        rows += [
            Level("vllm", streams, 1000.0, 20.0),
            Level("ray-serve-llm", streams, 300.0, 90.0),
            Level("servefleet", streams, servefleet_tps, 20.0 + ttft_added),
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
