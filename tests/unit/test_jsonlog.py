import io
import json
import logging
import sys

import pytest

from serve_app.jsonlog import CONTEXT_FIELDS, JsonFormatter, install_json_logging


def record(message="request finished", *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("serve_app.ingress", logging.INFO, __file__, 1, message, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_a_line_is_one_json_object_with_the_core_fields():
    line = JsonFormatter().format(record("took %.1f ms", 12.34))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "serve_app.ingress"
    assert entry["message"] == "took 12.3 ms"
    assert entry["ts"].endswith("+00:00") and "T" in entry["ts"]


def test_request_context_and_timings_become_fields():
    entry = json.loads(
        JsonFormatter().format(
            record(request_id="req-1", variant="tiny-v2", status=200, ttft_s=0.12, e2e_s=1.5, output_tokens=32)
        )
    )
    assert entry["request_id"] == "req-1"
    assert entry["variant"] == "tiny-v2"
    assert entry["status"] == 200
    assert (entry["ttft_s"], entry["e2e_s"], entry["output_tokens"]) == (0.12, 1.5, 32)
    assert "model" not in entry  # absent fields are left out, not written as null


def test_prompt_and_output_text_never_appear_unless_asked_for():
    rec = record(request_id="r", prompt="my secret question", output="the model's answer", messages="also secret")
    quiet = JsonFormatter().format(rec)
    assert "secret" not in quiet and "answer" not in quiet
    loud = json.loads(JsonFormatter(include_text=True).format(rec))
    assert (loud["prompt"], loud["output"]) == ("my secret question", "the model's answer")
    assert "messages" not in loud  # only the named text fields, even when text is on


def test_unknown_extras_are_dropped():
    entry = json.loads(JsonFormatter().format(record(user_email="a@b.c", request_id="r")))
    assert "user_email" not in entry and entry["request_id"] == "r"
    assert {"request_id", "variant", "status", "ttft_s", "itl_s", "e2e_s"} <= set(CONTEXT_FIELDS)


def test_exceptions_are_one_field_and_odd_values_do_not_break_the_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("failed", exc_info=sys.exc_info(), status=object())
    entry = json.loads(JsonFormatter().format(rec))
    assert "RuntimeError: boom" in entry["exc"]
    assert entry["status"].startswith("<object")


@pytest.fixture
def app_logger():
    logger = logging.getLogger("sf_test_app")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_install_writes_json_lines_once_and_is_idempotent(app_logger):
    stream = io.StringIO()
    install_json_logging(stream=io.StringIO(), loggers=["sf_test_app"])
    handler = install_json_logging(stream=stream, loggers=["sf_test_app"], level="DEBUG")
    assert [h.get_name() for h in app_logger.handlers].count("servefleet-json") == 1
    logging.getLogger("sf_test_app.child").debug("hello", extra={"variant": "v1"})
    assert not app_logger.propagate
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["logger"], entry["message"], entry["variant"], entry["level"]) == (
        "sf_test_app.child",
        "hello",
        "v1",
        "DEBUG",
    )
    assert isinstance(handler.formatter, JsonFormatter) and not handler.formatter.include_text


def test_default_stream_is_the_real_stderr_not_a_redirect(app_logger, monkeypatch):
    redirect = io.StringIO()
    monkeypatch.setattr("sys.stderr", redirect)  # what Serve does to a replica's sys.stderr
    handler = install_json_logging(loggers=["sf_test_app"])
    assert handler.stream is sys.__stderr__
