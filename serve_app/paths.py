"""Where the project keeps what it builds and writes at run time.

Everything lives under one cache folder (``SERVEFLEET_CACHE``, default ``<checkout>/.cache``) so that a clean
clone builds it again and nothing leaks into the home folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """The root of everything generated: models, Ray temp files, logs, state."""
    path = Path(os.environ.get("SERVEFLEET_CACHE", PROJECT_ROOT / ".cache")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Built-in models are written here, one folder per variant name."""
    return cache_dir() / "models"


def logs_dir() -> Path:
    path = cache_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    """Files that describe a running local cluster (pids, addresses)."""
    path = cache_dir() / "state"
    path.mkdir(parents=True, exist_ok=True)
    return path
