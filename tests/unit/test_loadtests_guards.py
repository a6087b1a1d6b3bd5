import pytest

from loadtests.guards import (
    MAX_RUN_TIME_S,
    MAX_USERS,
    HostNotAllowed,
    LoadTestBoundsError,
    check_loopback_host,
    check_run_time,
    check_users,
    parse_duration,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "https://127.10.20.30",
        "http://localhost:8000",
        "http://LOCALHOST",
        "http://[::1]:8000",
        "http://[::ffff:127.0.0.1]:8000",
    ],
)
def test_loopback_hosts_are_allowed(url):
    assert check_loopback_host(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000",
        "http://192.168.1.10",
        "http://0.0.0.0:8000",
        "http://example.com",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://[::2]:8000",
        "http://[::ffff:10.0.0.1]",
    ],
)
def test_other_hosts_are_refused_with_a_clear_reason(url):
    with pytest.raises(HostNotAllowed, match="only loopback hosts are allowed"):
        check_loopback_host(url)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "", "http://127.0.0.1:notaport"])
def test_urls_that_are_not_http_are_refused(url):
    with pytest.raises(HostNotAllowed):
        check_loopback_host(url)


def test_host_refusal_is_a_bounds_error_and_a_value_error():
    # The CLI catches LoadTestBoundsError; pydantic validators need a ValueError.
    assert issubclass(HostNotAllowed, LoadTestBoundsError)
    assert issubclass(HostNotAllowed, ValueError)


def test_users_and_run_time_are_bounded():
    assert check_users(1) == 1 and check_users(MAX_USERS) == MAX_USERS
    assert check_run_time(MAX_RUN_TIME_S) == MAX_RUN_TIME_S
    for bad in (0, MAX_USERS + 1):
        with pytest.raises(LoadTestBoundsError, match="users must be between"):
            check_users(bad)
    for bad in (0, -1, MAX_RUN_TIME_S + 1):
        with pytest.raises(LoadTestBoundsError, match="run time"):
            check_run_time(bad)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("2m", 120), ("1h", 3600), (" 1.5m ", 90)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "1h30m", "-5s", "5d"])
def test_bad_durations_are_refused(text):
    with pytest.raises(LoadTestBoundsError):
        parse_duration(text)
