"""The soak's judgement of memory samples, its request tally, its report and how it names processes (pure)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from loadtests.soak import add_arguments, bounds_problem
from loadtests.soak_analysis import (
    MIB,
    TOTAL_LABEL,
    MemorySample,
    Thresholds,
    analyse,
    growing,
    least_squares_slope,
    markdown,
    tally,
    trend,
)
from loadtests.soak_processes import ProcessInfo, base_label, label_processes

TH = Thresholds(warmup_s=100, max_slope_mib_per_10min=5, max_growth_mib=5)
TIMES = [float(t) for t in range(0, 610, 10)]  # a 10-minute run sampled every 10 s


def series(mib_at, times=TIMES, pid=1, label="p"):
    return [MemorySample(t, pid, label, rss=0, uss=int(mib_at(t) * MIB), pss=0) for t in times]


def by_label(trends):
    return {(t.label, t.pid): t for t in trends}


def test_least_squares_slope_of_a_line_and_degenerate_cases() -> None:
    assert least_squares_slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert least_squares_slope([0, 1, 2], [5, 5, 5]) == pytest.approx(0.0)
    assert least_squares_slope([1], [1]) is None
    assert least_squares_slope([2, 2], [1, 3]) is None
    with pytest.raises(ValueError):
        least_squares_slope([1, 2], [1])


def test_a_constant_process_is_flat() -> None:
    (t, total) = analyse(series(lambda t: 100), "uss", TH)
    assert t.verdict == "flat"
    assert (t.start_mib, t.end_mib, t.peak_mib) == pytest.approx((100, 100, 100))
    assert t.growth_mib == pytest.approx(0) and t.slope_mib_per_10min == pytest.approx(0)
    assert t.points == 51  # samples at 100..600 s
    assert total.label == TOTAL_LABEL and total.verdict == "flat"


def test_a_steady_leak_is_growing_with_its_slope_and_growth() -> None:
    # 1 MiB a minute from the start: 10 MiB per 10 min.
    (t, _) = analyse(series(lambda t: 200 + t / 60), "uss", TH)
    assert t.verdict == "growing"
    assert t.slope_mib_per_10min == pytest.approx(10.0)
    # Means of the first three (100-120 s) and last three (580-600 s) samples: 201.83 and 209.83.
    assert t.growth_mib == pytest.approx(8.0)
    assert t.growth_pct == pytest.approx(100 * 8.0 / (200 + 110 / 60))
    assert growing([t]) == [t]


def test_growth_during_the_warm_up_is_not_held_against_a_process() -> None:
    (t, _) = analyse(series(lambda t: 100 + min(t, 90)), "uss", TH)  # +90 MiB, all before 100 s
    assert t.verdict == "flat"
    assert t.peak_mib == pytest.approx(190)
    assert t.growth_mib == pytest.approx(0)


def test_one_step_has_growth_but_not_the_slope_of_a_leak() -> None:
    # A cache filling once, by 9 MiB, at the last sample but one: net growth > 5 but slope stays small.
    (t, _) = analyse(series(lambda t: 100 + (9 if t >= 590 else 0)), "uss", TH)
    assert t.growth_mib > 5
    assert t.slope_mib_per_10min < 5
    assert t.verdict == "flat"


def test_noise_without_net_growth_is_flat() -> None:
    (t, _) = analyse(series(lambda t: 100 + (3 if int(t) % 20 else -3)), "uss", TH)
    assert t.verdict == "flat"


def test_thresholds_decide() -> None:
    samples = series(lambda t: 200 + t / 60)
    (t, _) = analyse(samples, "uss", Thresholds(warmup_s=100, max_slope_mib_per_10min=20, max_growth_mib=5))
    assert t.verdict == "flat"
    (t, _) = analyse(samples, "uss", Thresholds(warmup_s=100, max_slope_mib_per_10min=5, max_growth_mib=10))
    assert t.verdict == "flat"


def test_processes_that_come_late_or_go_early_are_not_judged() -> None:
    samples = [
        *series(lambda t: 100, pid=1, label="raylet"),
        *series(lambda t: 50 + t, times=TIMES[20:], pid=2, label="idle ray worker"),  # appears at 200 s
        *series(lambda t: 50 + t, times=TIMES[:40], pid=3, label="idle ray worker"),  # gone at 390 s
    ]
    trends = by_label(analyse(samples, "uss", TH))
    assert trends[("raylet", 1)].verdict == "flat"
    assert trends[("idle ray worker", 2)].verdict == "short-lived"
    assert trends[("idle ray worker", 3)].verdict == "short-lived"
    assert trends[("idle ray worker", 2)].growth_mib is None
    assert not growing(trends.values())


def test_a_pid_that_changes_title_starts_a_new_series() -> None:
    samples = [
        *series(lambda t: 80, times=TIMES[:5], pid=7, label="idle ray worker"),
        *series(lambda t: 300, times=TIMES[5:], pid=7, label="app/ingress"),
    ]
    trends = by_label(analyse(samples, "uss", Thresholds(warmup_s=50)))
    assert trends[("app/ingress", 7)].verdict == "flat"
    assert trends[("idle ray worker", 7)].verdict == "short-lived"


def test_the_sum_is_reported_but_never_named_growing() -> None:
    samples = [*series(lambda t: 100, pid=1), *series(lambda t: 100 + t, times=TIMES[30:], pid=2)]
    trends = analyse(samples, "uss", TH)
    total = trends[-1]
    assert total.label == TOTAL_LABEL and total.pid == 0
    assert total.peak_mib == pytest.approx(100 + 100 + 600)
    assert growing(trends) == []


def test_metrics_and_sorting() -> None:
    small = [MemorySample(t, 1, "small", rss=9 * MIB, uss=1 * MIB, pss=2 * MIB) for t in TIMES]
    big = [MemorySample(t, 2, "big", rss=9 * MIB, uss=5 * MIB, pss=3 * MIB) for t in TIMES]
    assert [t.label for t in analyse(small + big, "uss", TH)][:2] == ["big", "small"]
    assert analyse(small, "pss", TH)[0].peak_mib == pytest.approx(2)
    assert analyse(small, "rss", TH)[0].peak_mib == pytest.approx(9)
    with pytest.raises(ValueError):
        analyse(small, "vms", TH)
    assert analyse([], "uss", TH) == []


def test_a_run_shorter_than_the_warm_up_judges_nothing() -> None:
    trends = analyse(series(lambda t: 100, times=TIMES[:5]), "uss", TH)
    assert {t.verdict for t in trends} == {"short-lived"}


def test_trend_rejects_an_empty_series_and_thresholds_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        trend("p", 1, [], TH, window=(0, 1))
    with pytest.raises(ValueError):
        Thresholds(max_growth_mib=-1)
    with pytest.raises(ValueError):
        Thresholds(edge_points=4, min_points=3)


@dataclass
class Req:
    kind: str
    status: int | None
    ok: bool
    error: str | None = None


def test_tally_counts_by_kind_and_status_and_keeps_errors() -> None:
    counts = tally(
        [
            Req("stream", 200, True),
            Req("stream", 200, True),
            Req("chat", 200, True),
            Req("stream", 200, False, "stream ended without [DONE]"),
            Req("completion", 503, False, "HTTP 503: busy"),
            Req("chat", None, False, "client timeout after 120s"),
        ]
    )
    assert (counts.total, counts.ok, counts.failed) == (6, 3, 3)
    assert counts.by_kind_status == {
        "chat 200": 1,
        "chat no response failed": 1,
        "completion 503 failed": 1,
        "stream 200": 2,
        "stream 200 failed": 1,
    }
    assert counts.errors["HTTP 503: busy"] == 1


def test_markdown_names_the_verdict_rows_and_failures() -> None:
    samples = [*series(lambda t: 100, pid=11, label="servefleet/ingress"), *series(lambda t: 200 + t / 60, pid=12)]
    trends = analyse(samples, "uss", TH)
    text = markdown(
        trends,
        tally([Req("stream", 200, True), Req("chat", 500, False, "HTTP 500: x")]),
        metric="uss",
        thresholds=TH,
        context={"command": "`python -m loadtests.soak`"},
    )
    assert "- command: `python -m loadtests.soak`" in text
    assert "**memory: GROWING (p [12])**" in text
    assert "**requests: 2, ok 1, failed 1**" in text
    assert "| servefleet/ingress | 11 | 0-600 | 100.0 | 100.0 | 100.0 | +0.0 | +0.00 | +0.00 | +0.00 | flat |" in text
    assert f"| **{TOTAL_LABEL}** |" in text
    assert "- 1 x `HTTP 500: x`" in text
    flat = markdown([t for t in trends if t.pid == 11], tally([]), metric="uss", thresholds=TH, context={})
    assert "**memory: FLAT**" in flat


@pytest.mark.parametrize(
    ("name", "cmdline", "label"),
    [
        ("ray::ServeRepli", ["ray::ServeReplica:servefleet:engine-tiny-v1"], "servefleet/engine-tiny-v1"),
        ("ray::ServeRepli", ["ray::ServeReplica:servefleet:ingress.handle_request()"], "servefleet/ingress"),
        ("ray::ProxyActor", ["ray::ProxyActor"], "serve proxy"),
        ("ray::ServeContr", ["ray::ServeController"], "serve controller"),
        ("ray::ServeRepli", ["ray::SERVE_REPLICA::app#dep#gz9d:ServeReplica:app:dep.__init__"], "app/dep"),
        ("ray::IDLE", ["ray::IDLE"], "idle ray worker"),
        ("ray::Dashboard", ["ray::DashboardAgent"], "dashboard agent"),
        ("ray::RuntimeE", ["ray::RuntimeEnvAgent"], "runtime env agent"),
        ("python", ["/v/python", "-m", "ray.util.client.server", "--mode=proxy"], "ray client server"),
        ("python", ["/v/python", "-B", "-c", "from multiprocessing.forkserver import main; main(25)"], "forkserver"),
        ("ray::Other", ["ray::Other.run()"], "ray actor Other"),
        ("VLLM::EngineCor", ["VLLM::EngineCore"], "vllm EngineCore"),
        ("gcs_server", ["/x/gcs_server", "--gcs_server_port=1"], "gcs_server"),
        ("raylet", ["/x/raylet", "--raylet_socket_name=y"], "raylet"),
        ("python", ["/v/python", "-u", "/v/ray/dashboard/agent.py", "--node-id=1"], "dashboard agent"),
        ("python", ["/v/python", "/v/ray/dashboard/dashboard.py", "--host=127.0.0.1"], "dashboard"),
        ("python", ["ray-dashboard-StateHead-0 (/v/python -c ...)"], "dashboard StateHead"),
        ("python", ["/v/python", "-u", "/v/ray/_private/runtime_env/agent/main.py"], "runtime env agent"),
        ("python", ["/v/python", "-u", "/v/ray/_private/log_monitor.py"], "log monitor"),
        ("python", ["/v/python", "-m", "ray.scripts.scripts", "start", "--head"], "ray start"),
        ("python", [], "python"),
    ],
)
def test_base_labels(name: str, cmdline: list[str], label: str) -> None:
    assert base_label(name, cmdline) == label


def test_processes_below_a_replica_are_named_after_it() -> None:
    processes = [
        ProcessInfo(1, 0, "raylet", ("/x/raylet",)),
        ProcessInfo(2, 1, "ray::ServeRepli", ("ray::ServeReplica:app:engine-tiny-v1",)),
        ProcessInfo(3, 2, "VLLM::EngineCor", ("VLLM::EngineCore",)),
        ProcessInfo(4, 3, "python", ("/v/python", "-c", "from multiprocessing.resource_tracker import main")),
        ProcessInfo(5, 1, "ray::ServeRepli", ("ray::ServeReplica:app:engine-tiny-v2",)),
        ProcessInfo(6, 5, "VLLM::EngineCor", ("VLLM::EngineCore",)),
        ProcessInfo(7, 99, "python", ("/v/python",)),  # parent outside the sampled set
    ]
    assert label_processes(processes) == {
        1: "raylet",
        2: "app/engine-tiny-v1",
        3: "app/engine-tiny-v1 > vllm EngineCore",
        4: "app/engine-tiny-v1 > resource tracker",
        5: "app/engine-tiny-v2",
        6: "app/engine-tiny-v2 > vllm EngineCore",
        7: "python",
    }


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_soak_arguments_are_bounded() -> None:
    assert bounds_problem(_args()) is None
    assert _args().duration == 1200 and _args().warmup == 600 and _args().interval == 10
    assert bounds_problem(_args("--duration", "90", "--warmup", "20", "--interval", "5")) is None
    assert bounds_problem(_args("--duration", "7200")) is not None
    assert bounds_problem(_args("--duration", "100", "--warmup", "100")) is not None
    assert bounds_problem(_args("--interval", "0.5")) is not None
    assert bounds_problem(_args("--duration", "60", "--warmup", "50", "--interval", "10")) is not None
    assert bounds_problem(_args("--concurrency", "65")) is not None
    assert bounds_problem(_args("--max-requests", "0")) is not None


def test_the_last_third_slope_tells_a_filling_cache_from_a_steady_leak():
    thresholds = Thresholds(warmup_s=0, edge_points=1, min_points=5)
    # A cache: fast growth that levels off. A leak: the same total growth at a constant rate.
    cache = [(t, 100 + 60 * (1 - 0.99**t)) for t in range(0, 601, 10)]
    leak = [(t, 100 + 0.06 * t) for t in range(0, 601, 10)]
    filling = trend("cache", 1, cache, thresholds, window=(0, 600))
    leaking = trend("leak", 2, leak, thresholds, window=(0, 600))
    assert filling.verdict == leaking.verdict == "growing"  # the verdict stays strict
    assert leaking.tail_slope_mib_per_10min == pytest.approx(36.0)
    assert filling.tail_slope_mib_per_10min < leaking.tail_slope_mib_per_10min / 10
