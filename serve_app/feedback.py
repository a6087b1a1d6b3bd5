"""User feedback on answers: the ``POST /v1/feedback`` body, and a durable store on SQLite.

Scores are on a 1..5 scale (5 best; a thumbs-up/down UI sends 5 and 1). A positive scale, rather than -1..1,
lets the per-variant score sum be a Prometheus counter, which can only grow; the mean is sum / count.

One rating per request: rating the same request again replaces its score and comment (the last word counts)
but keeps the variant and time of the first, since one request was served by one variant.

The store is one SQLite file in WAL mode, so several ingress replicas on one node can share it. Calls block
for about a millisecond; from async code run them with ``asyncio.to_thread``. On a multi-node fleet each node
has its own file, so a fleet-wide summary needs a shared database behind the same interface.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel, ConfigDict, Field

from serve_app.paths import cache_dir

SCORE_MIN = 1.0
SCORE_MAX = 5.0
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    variant    TEXT NOT NULL,
    score      REAL NOT NULL CHECK (score BETWEEN 1 AND 5),
    comment    TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_variant_created ON feedback (variant, created_at);
"""


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``: a rating of one answer, named by its request id and the variant that
    served it (both are on every response: ``x-request-id`` and ``x-servefleet-variant`` / ``model``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(min_length=1, max_length=200, pattern=r"^\S+$", description="The answer's request id.")
    variant: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="The variant that served the answer."
    )
    score: float = Field(
        ge=SCORE_MIN, le=SCORE_MAX, allow_inf_nan=False, description="1 (worst) to 5 (best); thumbs: 5 or 1."
    )
    comment: str | None = Field(default=None, max_length=4000, description="Free text; stored, never logged.")


@dataclass(frozen=True, slots=True)
class FeedbackEntry:
    request_id: str
    variant: str
    score: float
    comment: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class VariantFeedback:
    count: int
    mean: float


def default_feedback_path() -> Path:
    return cache_dir() / "feedback" / "feedback.sqlite3"


class FeedbackStore:
    """Feedback kept in one SQLite file; safe to share between threads of one process and between processes."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_feedback_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode with explicit transactions; one connection guarded by a lock for this process,
        # SQLite's own locking (with a busy timeout) between processes.
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this code's")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def record(
        self, request_id: str, variant: str, score: float, comment: str | None = None, *, now: float | None = None
    ) -> bool:
        """Store a rating; True if it is the request's first, False if it replaced an earlier one."""
        if not SCORE_MIN <= score <= SCORE_MAX:  # also refuses NaN
            raise ValueError(f"score must be within {SCORE_MIN:g}..{SCORE_MAX:g}, got {score}")
        stamp = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._db.execute(
                    "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                    (request_id, variant, float(score), comment, stamp, stamp),
                ).rowcount
                if not inserted:
                    self._db.execute(
                        "UPDATE feedback SET score = ?, comment = ?, updated_at = ? WHERE request_id = ?",
                        (float(score), comment, stamp, request_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return inserted == 1

    def get(self, request_id: str) -> FeedbackEntry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT request_id, variant, score, comment, created_at, updated_at FROM feedback WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        return FeedbackEntry(*row) if row is not None else None

    def summary(self, *, since: float | None = None) -> dict[str, VariantFeedback]:
        """Count and mean score per variant, of ratings first given at or after ``since`` (all by default)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT variant, COUNT(*), AVG(score) FROM feedback WHERE created_at >= ? "
                "GROUP BY variant ORDER BY variant",
                (float("-inf") if since is None else since,),
            ).fetchall()
        return {variant: VariantFeedback(count=count, mean=mean) for variant, count, mean in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
