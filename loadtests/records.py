"""One row per load-test request: the typed record, and its CSV file (written by Locust, read by the runner).

Locust's own CSVs hold aggregates; the release gate needs every sample to run its statistical tests, so each
simulated user appends one ``RequestRecord`` per request to a per-request CSV file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loadtests.sse import StreamMetrics


class RequestRecord(BaseModel):
    """What one request measured. Latencies in seconds; ``None`` where the request failed before them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_time: float = Field(description="Unix time the request was sent.")
    profile: str = Field(default="", description="The load profile that sent it.")
    prompt_index: int = Field(default=-1, description="Index of the prompt in the seeded workload.")
    requested_variant: str = Field(default="", description="The variant pinned by header; empty when routed.")
    variant: str = Field(default="", description="The variant that served it (response header); empty if unknown.")
    request_id: str = Field(default="", description="The server's x-request-id.")
    status: int = Field(description="HTTP status; 0 when no response arrived (connection error, timeout).")
    ok: bool
    error: str = Field(default="", description="Why the request failed; empty when it succeeded.")
    ttft_s: float | None = None
    itl_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    chunks: int = 0
    max_gap_s: float | None = None
    finish_reason: str = ""
    stream: bool = Field(default=True, description="Streamed (SSE) or a plain JSON answer.")
    error_type: str = Field(default="", description="The OpenAI error type (body or stream event); empty if none.")
    retry_after: str = Field(default="", description="The Retry-After header of a failed response; empty if none.")

    @field_validator("ttft_s", "itl_s", "e2e_s", "output_tokens", "prompt_tokens", "max_gap_s", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def end_time(self) -> float | None:
        return None if self.e2e_s is None else self.start_time + self.e2e_s

    @property
    def first_token_time(self) -> float | None:
        return None if self.ttft_s is None else self.start_time + self.ttft_s


CSV_FIELDS: tuple[str, ...] = tuple(RequestRecord.model_fields)


def build_record(
    *,
    start_time: float,
    status: int,
    metrics: StreamMetrics | None,
    error: str = "",
    e2e_s: float | None = None,
    profile: str = "",
    prompt_index: int = -1,
    requested_variant: str = "",
    variant: str = "",
    request_id: str = "",
    stream: bool = True,
    error_type: str = "",
    retry_after: str = "",
) -> RequestRecord:
    """A record from a measured stream (``metrics``) or from a request that never produced one (``error``)."""
    identity = {
        "start_time": start_time,
        "profile": profile,
        "prompt_index": prompt_index,
        "requested_variant": requested_variant,
        "variant": variant,
        "request_id": request_id,
        "status": status,
        "stream": stream,
        "retry_after": retry_after,
    }
    if metrics is None:
        return RequestRecord(**identity, ok=False, error=error or f"HTTP {status}", e2e_s=e2e_s, error_type=error_type)
    failure = error or metrics.error or ""
    return RequestRecord(
        **identity,
        ok=not failure,
        error=failure,
        ttft_s=metrics.ttft_s,
        itl_s=metrics.itl_s,
        e2e_s=metrics.e2e_s,
        output_tokens=metrics.output_tokens,
        prompt_tokens=metrics.prompt_tokens,
        chunks=metrics.chunks,
        max_gap_s=metrics.max_gap_s,
        finish_reason=metrics.finish_reason or "",
        error_type=error_type or metrics.error_type or "",
    )


def to_row(record: RequestRecord) -> dict[str, str]:
    return {name: "" if value is None else str(value) for name, value in record.model_dump().items()}


def from_row(row: dict[str, str]) -> RequestRecord:
    return RequestRecord.model_validate(row)


class RecordWriter:
    """Appends records to a CSV file, one flushed line each, so a run killed mid-way keeps what it measured."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists() or path.stat().st_size == 0
        self.path = path
        self._file: IO[str] = path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        if new:
            self._writer.writeheader()

    def write(self, record: RequestRecord) -> None:
        self._writer.writerow(to_row(record))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> list[RequestRecord]:
    with path.open(newline="", encoding="utf-8") as file:
        return [from_row(row) for row in csv.DictReader(file)]


def write_records(path: Path, records: Iterable[RequestRecord]) -> None:
    writer = RecordWriter(path)
    try:
        for record in records:
            writer.write(record)
    finally:
        writer.close()
