"""Which configs were deployed, newest last, so that ``servefleet rollback`` can return to the one before.

Each deploy stores the whole validated config as a YAML file under the state folder, numbered; rollback
deploys the previous one and drops the newest. Plain files: an operator can read, diff or prune them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from serve_app.config import ServeFleetConfig, parse_config
from serve_app.paths import state_dir

KEEP = 20  # older entries are pruned; a rollback further back than this is a deploy of an old file


def history_dir(root: Path | None = None) -> Path:
    path = (root or state_dir()) / "deploys"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _entries(root: Path | None) -> list[Path]:
    return sorted(history_dir(root).glob("*.yaml"))


def record(config: ServeFleetConfig, root: Path | None = None) -> Path:
    """Remember ``config`` as the one now deployed (no new entry when it equals the newest)."""
    entries = _entries(root)
    data = config.model_dump(mode="json")
    if entries and yaml.safe_load(entries[-1].read_text()) == data:
        return entries[-1]
    number = int(entries[-1].stem) + 1 if entries else 1
    path = history_dir(root) / f"{number:06d}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    for old in _entries(root)[:-KEEP]:
        old.unlink()
    return path


def current(root: Path | None = None) -> ServeFleetConfig | None:
    entries = _entries(root)
    return parse_config(yaml.safe_load(entries[-1].read_text()), source=str(entries[-1])) if entries else None


def previous(root: Path | None = None) -> ServeFleetConfig | None:
    """The config before the newest, or None when there is nothing to roll back to."""
    entries = _entries(root)
    if len(entries) < 2:
        return None
    return parse_config(yaml.safe_load(entries[-2].read_text()), source=str(entries[-2]))


def drop_newest(root: Path | None = None) -> None:
    """After a rollback has been deployed: the rolled-back config is no longer part of the history."""
    entries = _entries(root)
    if entries:
        entries[-1].unlink()
