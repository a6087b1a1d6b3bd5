"""What Locust loads: ``python -m locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 ...``.

Exposes exactly one user class (``LLMUser``) and one shape (``ProfileShape``; Locust refuses a locustfile with
two). Choose the profile with ``--sf-profile NAME`` or ``SERVEFLEET_LOADTEST_PROFILE``; see ``options.py`` for the
other ``--sf-*`` options. ``loadtests/run.py`` (and ``servefleet loadtest``) builds these command lines for you.

Bounds (``guards.py``) are checked when Locust starts: a non-loopback ``--host``, more than the maximum users or
a headless run without ``--run-time`` stop the process before any request is sent.
"""

from __future__ import annotations

import logging
from typing import Any

from locust import events
from locust.env import Environment

from loadtests.guards import LoadTestBoundsError, check_loopback_host
from loadtests.llm_user import LLMUser, start_load_run
from loadtests.locust_shapes import ProfileShape
from loadtests.options import add_arguments

__all__ = ["LLMUser", "ProfileShape"]

logger = logging.getLogger("loadtests")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any, **_: Any) -> None:
    add_arguments(parser)


@events.init.add_listener
def _open_run(environment: Environment, **_: Any) -> None:
    try:
        LLMUser.load_run = start_load_run(environment)
    except LoadTestBoundsError as error:
        # SystemExit passes through Locust's event hooks (they catch Exception only) and ends the process.
        raise SystemExit(f"servefleet loadtest: {error}") from None


@events.test_start.add_listener
def _check_host(environment: Environment, **_: Any) -> None:
    # The web UI's form can set a host after ``init``; say so loudly here, and each user refuses it in on_start.
    try:
        check_loopback_host(environment.host or "")
    except LoadTestBoundsError as error:
        logger.error("%s; no requests will be sent", error)


@events.quit.add_listener
def _close_run(**_: Any) -> None:
    if LLMUser.load_run is not None:
        LLMUser.load_run.close()
