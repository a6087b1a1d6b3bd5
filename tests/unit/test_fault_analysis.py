"""The fault drill's pure parts: how Locust's records are split around a fault and judged, the report table, the
drill's argument bounds, and the Locust user's non-streaming and error-type measuring (no Ray, no Locust)."""

from __future__ import annotations

import argparse
import itertools
import json

import pytest

from loadtests import fault_drill
from loadtests.fault_analysis import Fault, analyse, is_retryable, markdown, not_run, phase, table
from loadtests.prompts import chat_request_body, is_streamed, make_prompt, plain_request_body
from loadtests.records import RequestRecord, from_row, to_row
from loadtests.run import LoadTestOptions, locust_command
from loadtests.sse import StreamMeter, error_type_of, measure_answer

T0 = 1_700_000_000.0  # Locust's records carry Unix times


def rec(
    start: float, end: float | None, *, status: int = 200, ok: bool = True, stream: bool = True, **kw
) -> RequestRecord:
    return RequestRecord(
        start_time=T0 + start,
        status=status,
        ok=ok,
        error="" if ok else kw.pop("error", "boom"),
        e2e_s=None if end is None else end - start,
        stream=stream,
        **kw,
    )


FAILED_503 = {"status": 503, "ok": False, "retry_after": "1", "error_type": "service_unavailable"}
FAILED_EVENT = {"status": 200, "ok": False, "error_type": "service_unavailable", "error": "error event in stream: x"}


def test_a_request_is_before_in_flight_or_after_the_window_in_which_the_part_died() -> None:
    at, gone = T0 + 10, T0 + 10.5
    assert phase(rec(0, 10), at, gone) == "before"  # ended exactly at the kill
    assert phase(rec(9, 11), at, gone) == "in_flight"
    assert phase(rec(10.2, 11), at, gone) == "in_flight"  # started after the kill, before the part was gone
    assert phase(rec(10.6, 11), at, gone) == "after"
    assert phase(rec(9, None), at, gone) == "in_flight"  # never ended: counted where it started


@pytest.mark.parametrize(
    ("fields", "retryable"),
    [
        (FAILED_503, True),
        ({**FAILED_503, "retry_after": ""}, False),  # a 503 without Retry-After does not say when
        (FAILED_EVENT, True),
        ({**FAILED_EVENT, "error_type": "internal_error"}, False),
        ({"status": 500, "ok": False, "error_type": "internal_error"}, False),
        ({"status": 0, "ok": False, "error": "no response: ReadTimeout"}, False),
        ({"status": 429, "ok": False, "retry_after": "1", "error_type": "rate_limit_error"}, False),
    ],
)
def test_only_a_503_with_retry_after_or_a_service_unavailable_stream_event_is_retryable(fields, retryable) -> None:
    assert is_retryable(rec(0, 1, **fields)) is retryable


def test_counts_and_verdict_when_the_guarantees_hold() -> None:
    records = [
        rec(0, 2),
        rec(1, 3, stream=False),
        rec(9, 12),  # in flight, survived
        rec(9.5, 10.3, **FAILED_EVENT),  # in flight on the killed part
        rec(9.8, 10.4, stream=False, **FAILED_503),
        rec(11, 13),
        rec(12, 14, stream=False),
    ]
    fault = Fault("replica-kill", "engine replica 42", T0 + 10, gone_at=T0 + 10.1, back_at=T0 + 40)
    result = analyse(records, fault, hang_s=60)
    assert (result.requests, result.failed) == (7, 2)
    assert (result.before.requests, result.before.failed) == (2, 0)
    assert (result.in_flight.requests, result.in_flight.failed) == (3, 2)
    assert (result.in_flight.failed_streaming, result.in_flight.failed_non_streaming) == (1, 1)
    assert (result.after.requests, result.after.failed) == (2, 0)
    assert (result.after.streaming, result.after.non_streaming) == (1, 1)
    assert result.failed_not_retryable == 0 and result.hung == 0
    assert result.slowest_s == pytest.approx(3.0)
    assert result.gone_s == pytest.approx(0.1) and result.capacity_back_s == pytest.approx(30)
    assert result.first_ok_after_s == pytest.approx(3.0)  # started 11 (after the part was gone), ended 13
    assert result.held and result.problems == ()
    assert sum(result.errors.values()) == 2


def test_a_failure_after_the_fault_one_not_retryable_a_hang_and_no_recovery_each_break_the_guarantees() -> None:
    records = [
        rec(0, 1, **FAILED_503),  # before the fault: only requests in flight may fail
        rec(9, 10.5, status=500, ok=False, error_type="internal_error"),  # in flight, but not retryable
        rec(11, 12, **FAILED_503),  # new, and failed
        rec(12, 80, status=0, ok=False, error="no response: ReadTimeout"),  # hit the client's timeout
    ]
    result = analyse(records, Fault("engine-crash", "core", T0 + 10), hang_s=60)
    assert not result.held
    text = " / ".join(result.problems)
    for words in ("failed before the fault", "started after the fault and failed", "not retryable", "hung", "capacity"):
        assert words in text
    assert result.failed_not_retryable == 2  # the 500 and the timeout
    assert result.gone_s is None and result.capacity_back_s is None and result.first_ok_after_s is None


def test_an_empty_run_and_a_scenario_not_run_do_not_pass() -> None:
    assert not analyse([], Fault("node-loss", "raylet", T0, T0, T0 + 5), hang_s=60).held
    skipped = not_run("engine-crash", "capacity did not come back", hang_s=60)
    assert not skipped.held and "not run" in skipped.problems[0]


def test_the_table_has_one_column_per_scenario_and_the_markdown_lists_problems_and_errors() -> None:
    good = analyse([rec(0, 1), rec(11, 12)], Fault("replica-kill", "replica 1", T0 + 10, T0 + 10, T0 + 20), hang_s=60)
    bad = not_run("engine-crash", "cluster did not come up", hang_s=60)
    text = table([good, bad])
    header, rule, *rows = text.splitlines()
    assert header == "| measure | replica-kill | engine-crash |" and rule == "|---|---|---|"
    assert all(row.count("|") == 4 for row in rows)
    assert "| guarantees | held | NOT HELD |" in rows
    page = markdown([good, bad], context={"command": "`x`"})
    assert "- command: `x`" in page and "cluster did not come up" in page


def test_the_drill_refuses_out_of_range_arguments() -> None:
    parser = argparse.ArgumentParser()
    fault_drill.add_arguments(parser)
    assert fault_drill.bounds_problem(parser.parse_args([])) is None
    defaults = parser.parse_args([])
    assert (defaults.scenario, defaults.users, defaults.before, defaults.after) == ("all", 6, 10, 30)
    for argv in (["--users", "0"], ["--users", "33"], ["--before", "1"], ["--after", "601"], ["--hang", "5"]):
        assert fault_drill.bounds_problem(parser.parse_args(argv)) is not None, argv
    with pytest.raises(SystemExit):
        fault_drill.main(["--stream-fraction", "1.5"])


# ---------------------------------------------------------------------------------------------- Locust side


def test_non_streaming_answers_are_measured_and_malformed_ones_fail() -> None:
    answer = {
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
    metrics = measure_answer(json.dumps(answer), e2e_s=0.5)
    assert metrics.ok and metrics.output_tokens == 3 and metrics.prompt_tokens == 7 and metrics.e2e_s == 0.5
    assert metrics.ttft_s is None and metrics.finish_reason == "length"
    assert not measure_answer("not json", e2e_s=1).ok
    assert not measure_answer(json.dumps({**answer, "usage": None}), e2e_s=1).ok
    assert not measure_answer(json.dumps({"choices": [{"message": {"content": ""}}], "usage": {}}), e2e_s=1).ok


def test_error_types_come_from_bodies_and_stream_events() -> None:
    assert error_type_of('{"error": {"message": "m", "type": "service_unavailable"}}') == "service_unavailable"
    assert error_type_of("<html>") == "" and error_type_of("[1]") == ""
    meter = StreamMeter(0.0)
    meter.feed(0.1, b'data: {"error": {"message": "engine died", "type": "service_unavailable"}}\n\n')
    metrics = meter.finish(0.2)
    assert metrics.error == "error event in stream: engine died" and metrics.error_type == "service_unavailable"


def test_the_stream_mix_is_seeded_and_plain_bodies_do_not_stream() -> None:
    draws = [is_streamed(0, i, 0.5) for i in range(400)]
    assert draws == [is_streamed(0, i, 0.5) for i in range(400)]
    assert 150 < sum(draws) < 250
    assert all(is_streamed(0, i, 1) for i in range(50)) and not any(is_streamed(0, i, 0) for i in range(50))
    body = plain_request_body(make_prompt(0, 3), model="tiny")
    assert body["stream"] is False and "stream_options" not in body
    assert {k: v for k, v in chat_request_body(make_prompt(0, 3), model="tiny").items() if k != "stream_options"} == {
        **body,
        "stream": True,
    }


def test_records_keep_stream_error_type_and_retry_after_through_csv() -> None:
    record = rec(0, 1, stream=False, **FAILED_503)
    assert from_row(to_row(record)) == record
    old_row = {k: v for k, v in to_row(rec(0, 1)).items() if k not in ("stream", "error_type", "retry_after")}
    assert from_row(old_row).stream is True  # CSVs written before these fields still read


def test_locust_command_carries_the_stream_mix_and_stop_timeout(tmp_path) -> None:
    options = LoadTestOptions(host="http://127.0.0.1:8000", csv_dir=tmp_path, stream_fraction=0.5, stop_timeout_s=70)
    pairs = dict(itertools.pairwise(locust_command(options)))
    assert pairs["--sf-stream-fraction"] == "0.5" and pairs["--stop-timeout"] == "70"
    assert "--sf-stream-fraction" not in locust_command(LoadTestOptions(host="http://127.0.0.1:8000"))
