"""The bounds every load run is held to: loopback hosts only, a ceiling on users, a ceiling on run time.

A load generator pointed at the wrong URL is a denial-of-service tool, so the host check refuses anything that
is not this machine, whatever the caller asked for. It is applied in three places (the CLI before Locust
starts, the locustfile when Locust starts, and each simulated user before its first request), because the
web UI lets a person type another host after the process has started.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

MAX_USERS = 64
"""More concurrent users than the tiny CPU variants' ``max_ongoing_requests`` only measures queueing."""

MAX_RUN_TIME_S = 3600
"""One hour: long enough for a soak on this machine, short enough that a forgotten run ends on its own."""


class LoadTestBoundsError(ValueError):
    """A run that would leave the bounds above; the message says which bound and what was asked."""


class HostNotAllowed(LoadTestBoundsError):
    """The target host is not a loopback address."""


def check_loopback_host(url: str) -> str:
    """Return ``url`` without a trailing slash if it names a loopback host; raise ``HostNotAllowed`` if not.

    Allowed: ``localhost``, any address in 127.0.0.0/8, and ``[::1]``. Names are not resolved (a DNS name that
    happens to resolve to 127.0.0.1 today may not tomorrow), so only literal addresses and ``localhost`` pass.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostNotAllowed(f"host must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - urlsplit validates the port lazily; a bad one raises here
    except ValueError as error:
        raise HostNotAllowed(f"host URL {url!r} is malformed: {error}") from None
    if not host or not _is_loopback(host):
        raise HostNotAllowed(
            f"refusing to load-test {url!r}: only loopback hosts are allowed "
            "(127.0.0.0/8, localhost, [::1]); load tests must never leave this machine"
        )
    return url.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def check_users(users: int) -> int:
    if not 1 <= users <= MAX_USERS:
        raise LoadTestBoundsError(f"users must be between 1 and {MAX_USERS}, got {users}")
    return users


def check_run_time(seconds: float) -> float:
    if not 0 < seconds <= MAX_RUN_TIME_S:
        raise LoadTestBoundsError(f"run time must be more than 0 s and at most {MAX_RUN_TIME_S} s, got {seconds:g} s")
    return seconds


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"2m"``, ``"1h"`` -> seconds. Compound forms like Locust's ``1h30m`` are not needed."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise LoadTestBoundsError(f"run time must look like 90, 90s, 2m or 1h, got {text!r}")
    return float(match.group(1)) * _UNIT_S[match.group(2)]
