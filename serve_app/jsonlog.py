"""Structured logs: one JSON object per line, with the request's id, variant, status and timings as fields.

Context travels as ``extra``: ``logger.info("request finished", extra={"request_id": rid, "variant": v,
"status": 200, "ttft_s": 0.12})``. Only the names in ``CONTEXT_FIELDS`` are written. An allow-list rather than
a deny-list, because the one thing these logs must never hold is what users typed or what the model wrote:
``prompt`` and ``output`` are written only when the formatter is built with ``include_text=True`` (a debugging
switch, off in production), and any other extra is dropped whatever its name.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

# Identity and outcome of a request, then its timings and sizes; all short, none holding user text.
CONTEXT_FIELDS: tuple[str, ...] = (
    "request_id",
    "variant",
    "model",
    "route",
    "status",
    "error_type",
    "reason",
    "stream",
    "ttft_s",
    "itl_s",
    "e2e_s",
    "prompt_tokens",
    "output_tokens",
    "finish_reason",
    "shadow_variant",
    "psi",
)
TEXT_FIELDS: tuple[str, ...] = ("prompt", "output")

APP_LOGGERS: tuple[str, ...] = ("serve_app", "deployments")


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "logger", "message", ...context fields, "exc"}`` on one line."""

    def __init__(self, *, include_text: bool = False) -> None:
        super().__init__()
        self.include_text = include_text
        self._fields = CONTEXT_FIELDS + (TEXT_FIELDS if include_text else ())

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self._fields:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        # default=str: a stray non-JSON value (a Path, an enum) must not cost the log line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def install_json_logging(
    *,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    include_text: bool = False,
    loggers: Iterable[str] = APP_LOGGERS,
) -> logging.Handler:
    """Send the app's loggers to ``stream`` as JSON lines, each line once (the loggers stop propagating).

    The default stream is the process's real stderr (``sys.__stderr__``), not ``sys.stderr``: inside a Serve
    replica ``sys.stderr`` is Serve's redirect into its own logger, which would wrap every JSON line in a
    second log line. Ray writes a worker's real stderr to ``worker-*.err`` in the session's log folder (and
    echoes it to the driver). Idempotent: calling it again replaces the handler it installed before.
    """
    handler = logging.StreamHandler(stream if stream is not None else (sys.__stderr__ or sys.stderr))
    handler.setFormatter(JsonFormatter(include_text=include_text))
    handler.set_name("servefleet-json")
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "servefleet-json"]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    return handler
