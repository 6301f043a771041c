"""Where kbchat keeps its files: one data dir, from --home, KBCHAT_HOME or the platform default."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The data dir (created if missing): `home`, else $KBCHAT_HOME, else the user data dir."""
    chosen = home or os.environ.get("KBCHAT_HOME") or platformdirs.user_data_dir("kbchat", appauthor=False)
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url(home: str | os.PathLike[str] | None = None) -> str:
    """$KBCHAT_DB, else an SQLite file in the data dir."""
    return os.environ.get("KBCHAT_DB") or f"sqlite:///{data_dir(home) / 'ledger.db'}"
