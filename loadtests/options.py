"""The locustfile's own options: Locust custom arguments (``--sf-*``), each also settable by environment variable.

Prefixed ``sf-`` because Locust already owns ``--profile``. ``run.py`` builds command lines from the same names,
so the flag spelling lives here only. Importing this module does not import Locust.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loadtests.profiles import PROFILES

DEFAULT_MODEL = "tiny"
DEFAULT_REQUEST_TIMEOUT_S = 120.0

PROFILE = "--sf-profile"
VARIANT = "--sf-variant"
MODEL = "--sf-model"
SEED = "--sf-seed"
STICKY = "--sf-sticky-users"
REQUESTS_CSV = "--sf-requests-csv"
REQUEST_TIMEOUT = "--sf-request-timeout"
STREAM_FRACTION = "--sf-stream-fraction"


class LoadSettings(BaseModel):
    """What the simulated users need to know beyond Locust's own options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = Field(default="steady", description="Name of a profile in loadtests/profiles.py.")
    variant: str = Field(default="", description="Pin every request to this variant by header; empty: routed.")
    model: str = Field(default=DEFAULT_MODEL, description="The model name requests ask for.")
    seed: int = Field(default=0, description="Seed of the prompt workload, the think times and Poisson arrivals.")
    sticky_users: bool = Field(default=False, description="Send a per-user x-servefleet-user key (sticky routing).")
    requests_csv: Path | None = Field(default=None, description="Where to append one CSV row per request.")
    request_timeout_s: float = Field(default=DEFAULT_REQUEST_TIMEOUT_S, gt=0, description="Read timeout per request.")
    stream_fraction: float = Field(default=1.0, ge=0, le=1, description="Share of requests streamed; the rest not.")


def _env(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(f"SERVEFLEET_LOADTEST_{name}", default)


def add_arguments(parser: Any, environ: Mapping[str, str] | None = None) -> None:
    """Add the ``--sf-*`` options to Locust's parser (``events.init_command_line_parser``)."""
    env = os.environ if environ is None else environ
    # On the parser itself, not a group: Locust's extra keywords (include_in_web_ui) exist only there.
    parser.add_argument(
        PROFILE, choices=sorted(PROFILES), default=_env(env, "PROFILE", "steady"), help="load profile (shape + prompts)"
    )
    parser.add_argument(VARIANT, default=_env(env, "VARIANT", ""), help="pin requests to this variant by header")
    parser.add_argument(MODEL, default=_env(env, "MODEL", DEFAULT_MODEL), help="model name to ask for")
    parser.add_argument(SEED, type=int, default=int(_env(env, "SEED", "0")), help="workload seed")
    parser.add_argument(
        STICKY,
        action="store_true",
        default=_env(env, "STICKY_USERS", "") not in ("", "0", "false"),
        help="give each simulated user its own sticky routing key",
    )
    parser.add_argument(
        REQUESTS_CSV,
        default=_env(env, "REQUESTS_CSV", ""),
        help="per-request CSV path (default: <--csv prefix>_requests.csv when --csv is given)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        REQUEST_TIMEOUT,
        type=float,
        default=float(_env(env, "REQUEST_TIMEOUT", str(DEFAULT_REQUEST_TIMEOUT_S))),
        help="read timeout per request, seconds",
    )
    parser.add_argument(
        STREAM_FRACTION,
        type=float,
        default=float(_env(env, "STREAM_FRACTION", "1")),
        help="share of requests that stream (1: all); the others ask for one JSON answer",
    )


def settings_from_options(options: argparse.Namespace) -> LoadSettings:
    """``LoadSettings`` from Locust's parsed options; the requests CSV defaults next to Locust's own CSVs."""
    csv_path = options.sf_requests_csv or (f"{options.csv_prefix}_requests.csv" if options.csv_prefix else "")
    return LoadSettings(
        profile=options.sf_profile,
        variant=options.sf_variant,
        model=options.sf_model,
        seed=options.sf_seed,
        sticky_users=options.sf_sticky_users,
        requests_csv=Path(csv_path) if csv_path else None,
        request_timeout_s=options.sf_request_timeout,
        stream_fraction=options.sf_stream_fraction,
    )
