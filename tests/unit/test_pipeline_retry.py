"""Which failures of a non-streaming call the pipeline may send again: only those where no answer can have
reached the client and a live replica can take the retry."""

from __future__ import annotations

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from serve_app.errors import EngineDead, EngineUnavailable, InvalidRequest, Overloaded
from serve_app.pipeline import retry_safe, unwrap


def wrapped(error: BaseException) -> BaseException:
    """As the error arrives from another replica: Ray's RayTaskError, subclassing the cause's type."""
    return RayTaskError("generate", "Traceback: ...", error).as_instanceof_cause()


@pytest.mark.parametrize("error", [EngineDead("engine for v1 died"), ActorDiedError()], ids=["engine", "replica"])
def test_a_dead_engine_or_replica_is_retried(error):
    assert retry_safe(error)
    assert retry_safe(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [EngineUnavailable("injected fault"), InvalidRequest("bad"), Overloaded("busy"), RuntimeError("bug")],
    ids=["unavailable", "invalid", "overloaded", "bug"],
)
def test_other_failures_are_the_clients_to_see(error):
    assert not retry_safe(error)
    assert not retry_safe(wrapped(error))


def test_unwrap_recovers_the_domain_error_with_its_fields():
    original = EngineDead("engine for v1 died", None, "engine_unavailable")
    cause = unwrap(wrapped(original))
    assert isinstance(cause, EngineDead) and cause.message == original.message and cause.status_code == 503
