import pytest
from pydantic import ValidationError

from serve_app.limits import (
    LimitExceeded,
    LimitsConfig,
    LimitViolation,
    PayloadTooLarge,
    RequestTimedOut,
    check_body_size,
    check_request,
    timeout_error,
)
from serve_app.protocol import ChatCompletionRequest, CompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "tiny", "messages": MESSAGES, **fields})


def completion(**fields):
    return CompletionRequest.model_validate({"model": "tiny", "prompt": "hi", **fields})


def test_documented_defaults():
    limits = LimitsConfig()
    assert limits.max_body_bytes == 1024 * 1024
    assert (limits.max_prompt_tokens, limits.max_tokens, limits.max_n) == (None, 4096, 1)
    assert (limits.request_timeout_s, limits.stream_idle_timeout_s) == (300, 60)


@pytest.mark.parametrize("bad", [{"max_body_bytes": 0}, {"max_n": 0}, {"request_timeout_s": 0}, {"nope": 1}])
def test_config_validation(bad):
    with pytest.raises(ValidationError):
        LimitsConfig.model_validate(bad)


def test_body_size_at_the_limit_passes_and_one_byte_more_is_413():
    limits = LimitsConfig(max_body_bytes=100)
    assert check_body_size(100, limits) is None
    violation = check_body_size(101, limits)
    assert violation == LimitViolation(field="body", limit=100, actual=101)
    assert violation.status_code == 413
    error = violation.error()
    assert isinstance(error, PayloadTooLarge)
    assert (error.status_code, error.code, error.param) == (413, "request_too_large", None)
    assert "101 bytes" in error.message and "100" in error.message


def test_a_request_within_every_limit_passes():
    assert check_request(chat(max_tokens=4096), LimitsConfig(), prompt_tokens=10**6) is None
    assert check_request(completion(), LimitsConfig()) is None


def test_max_tokens_over_the_cap_is_a_400_naming_the_field():
    violation = check_request(chat(max_tokens=101), LimitsConfig(max_tokens=100))
    assert violation == LimitViolation(field="max_tokens", limit=100, actual=101)
    assert violation.status_code == 400
    error = violation.error()
    assert isinstance(error, LimitExceeded)
    assert (error.status_code, error.param, error.code) == (400, "max_tokens", "limit_exceeded")
    assert error.message == "max_tokens is 101; this server accepts at most 100"


def test_the_violation_names_max_completion_tokens_when_that_is_what_was_sent():
    violation = check_request(chat(max_tokens=5, max_completion_tokens=200), LimitsConfig(max_tokens=100))
    assert (violation.field, violation.actual) == ("max_completion_tokens", 200)
    # max_completion_tokens wins over max_tokens, as upstream: a small one passes even beside a large max_tokens.
    assert check_request(chat(max_tokens=500, max_completion_tokens=50), LimitsConfig(max_tokens=100)) is None


def test_a_completion_ignores_an_extra_max_completion_tokens_field():
    assert check_request(completion(max_completion_tokens=10**9), LimitsConfig(max_tokens=100)) is None
    violation = check_request(completion(max_tokens=101, max_completion_tokens="x"), LimitsConfig(max_tokens=100))
    assert violation == LimitViolation("max_tokens", 100, 101)


def test_no_cap_on_max_tokens_when_set_to_none():
    assert check_request(completion(max_tokens=10**9), LimitsConfig(max_tokens=None)) is None


def test_prompt_tokens_are_checked_once_known_and_named_per_endpoint():
    limits = LimitsConfig(max_prompt_tokens=50)
    assert check_request(chat(), limits) is None  # before preprocess: not known yet
    assert check_request(chat(), limits, prompt_tokens=50) is None
    assert check_request(chat(), limits, prompt_tokens=51) == LimitViolation("messages", 50, 51)
    violation = check_request(completion(), limits, prompt_tokens=51)
    assert violation == LimitViolation("prompt", 50, 51)
    assert violation.error().message == "the prompt is 51 tokens; this server accepts at most 50"


def test_n_over_max_n_is_reported_first():
    # The protocol refuses n > 1 today; this pins the limit for when it does not. model_construct skips validation.
    request = ChatCompletionRequest.model_construct(model="tiny", messages=[], n=3, max_tokens=10**6)
    violation = check_request(request, LimitsConfig(max_n=2, max_tokens=10))
    assert violation == LimitViolation("n", 2, 3)


@pytest.mark.parametrize(
    ("kind", "code", "seconds"), [("request", None, "300"), ("stream_idle", "stream_idle_timeout", "60")]
)
def test_timeouts_are_408(kind, code, seconds):
    error = timeout_error(kind, LimitsConfig())
    assert isinstance(error, RequestTimedOut)
    assert (error.status_code, error.error_type) == (408, "timeout_error")
    assert error.code == (code or "request_timeout")
    assert f"{seconds} s" in error.message
