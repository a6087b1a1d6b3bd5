import sqlite3
import threading
from contextlib import closing

import pytest
from pydantic import ValidationError

from serve_app.feedback import FeedbackRequest, FeedbackStore, VariantFeedback, default_feedback_path


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb" / "feedback.sqlite3") as opened:
        yield opened


def test_summary_is_count_and_mean_per_variant(store):
    assert store.summary() == {}
    assert store.record("r1", "v1", 5) is True
    assert store.record("r2", "v1", 2, "too short") is True
    assert store.record("r3", "v2", 4) is True
    assert store.summary() == {"v1": VariantFeedback(2, 3.5), "v2": VariantFeedback(1, 4.0)}


def test_feedback_survives_closing_and_reopening(tmp_path):
    path = tmp_path / "feedback.sqlite3"
    with FeedbackStore(path) as first:
        first.record("r1", "v1", 1, "wrong answer", now=100.0)
        first.record("r2", "v2", 5, now=101.0)
    with FeedbackStore(path) as second:
        assert second.summary() == {"v1": VariantFeedback(1, 1.0), "v2": VariantFeedback(1, 5.0)}
        entry = second.get("r1")
        assert entry is not None
        assert (entry.variant, entry.score, entry.comment, entry.created_at) == ("v1", 1.0, "wrong answer", 100.0)


def test_rating_again_replaces_the_score_but_keeps_variant_and_first_time(store):
    assert store.record("r1", "v1", 1, "bad", now=10.0) is True
    assert store.record("r1", "v2", 5, "fine after all", now=20.0) is False
    entry = store.get("r1")
    assert entry is not None
    assert (entry.variant, entry.score, entry.comment) == ("v1", 5.0, "fine after all")
    assert (entry.created_at, entry.updated_at) == (10.0, 20.0)
    assert store.summary() == {"v1": VariantFeedback(1, 5.0)}


def test_summary_since_counts_only_later_ratings(store):
    store.record("old", "v1", 1, now=100.0)
    store.record("new", "v1", 5, now=200.0)
    assert store.summary(since=150.0) == {"v1": VariantFeedback(1, 5.0)}
    assert store.summary(since=100.0) == {"v1": VariantFeedback(2, 3.0)}


@pytest.mark.parametrize("score", [0.99, 5.01, -1, float("nan"), float("inf")])
def test_scores_outside_one_to_five_are_refused(store, score):
    with pytest.raises(ValueError, match="score"):
        store.record("r1", "v1", score)
    assert store.get("r1") is None


def test_the_database_itself_refuses_bad_scores(store):
    # A second line of defence for anything writing to the file without this class.
    with closing(sqlite3.connect(store.path)) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("INSERT INTO feedback VALUES ('x', 'v1', 9, NULL, 0, 0)")


def test_concurrent_writers_from_threads_and_a_second_store_lose_nothing(tmp_path):
    path = tmp_path / "feedback.sqlite3"
    stores = [FeedbackStore(path), FeedbackStore(path)]  # like two ingress replicas on one node

    def write(worker: int) -> None:
        for i in range(50):
            stores[worker % 2].record(f"w{worker}-{i}", "v1", 1 + (i % 5))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].summary() == {"v1": VariantFeedback(200, 3.0)}
    for opened in stores:
        opened.close()


def test_a_newer_schema_is_not_touched(tmp_path):
    path = tmp_path / "feedback.sqlite3"
    with closing(sqlite3.connect(path)) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        FeedbackStore(path)


def test_default_path_is_under_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEFLEET_CACHE", str(tmp_path))
    assert default_feedback_path() == tmp_path.resolve() / "feedback" / "feedback.sqlite3"


def test_request_body_accepts_a_rating_and_refuses_bad_ones():
    body = FeedbackRequest.model_validate({"request_id": "req-1", "variant": "tiny-v2", "score": 4.5})
    assert (body.score, body.comment) == (4.5, None)
    bad = [
        {"request_id": "req-1", "variant": "tiny-v2", "score": 6},
        {"request_id": "req-1", "variant": "tiny-v2", "score": "NaN"},
        {"request_id": "", "variant": "tiny-v2", "score": 3},
        {"request_id": "req 1", "variant": "tiny-v2", "score": 3},
        {"request_id": "req-1", "variant": "../etc", "score": 3},
        {"request_id": "req-1", "variant": "tiny-v2", "score": 3, "comment": "x" * 4001},
        {"request_id": "req-1", "variant": "tiny-v2", "score": 3, "extra": 1},
    ]
    for payload in bad:
        with pytest.raises(ValidationError):
            FeedbackRequest.model_validate(payload)
