"""Configuration in one place: the environment (every `KBCHAT_*` variable is read here and nowhere
else), the data dir, the ledger's statuses, the method names and the limits the front ends share."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

# -- the environment ------------------------------------------------------------------------------------

ENV_HOME = "KBCHAT_HOME"
ENV_DB = "KBCHAT_DB"
ENV_MODEL = "KBCHAT_MODEL"
ENV_TOKEN = "KBCHAT_TOKEN"
ENV_CRASH_AT = "KBCHAT_CRASH_AT"  # fault injection for tests: see kbchat.faults


def env(name: str) -> str | None:
    """The value of a `KBCHAT_*` variable, or None when unset or empty."""
    return os.environ.get(name) or None


def data_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The data dir (created if missing): `home`, else $KBCHAT_HOME, else the user data dir."""
    chosen = home or env(ENV_HOME) or platformdirs.user_data_dir("kbchat", appauthor=False)
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url(home: str | os.PathLike[str] | None = None) -> str:
    """$KBCHAT_DB, else an SQLite file in the data dir."""
    return env(ENV_DB) or f"sqlite:///{data_dir(home) / 'ledger.db'}"


def model_spec(spec: str | None = None) -> str | None:
    """--model, else $KBCHAT_MODEL, else None (the default model)."""
    return spec or env(ENV_MODEL)


def env_token() -> str | None:
    return env(ENV_TOKEN)


# -- the ledger and the methods -------------------------------------------------------------------------

STATUSES = ("active", "reverted", "failed", "superseded", "committed")
KINDS = ("memory", "weight")
MEMORY_METHODS = ("serac", "ike")
WEIGHT_METHODS = ("rome", "memit", "alphaedit", "ft")
ALL_METHODS = MEMORY_METHODS + WEIGHT_METHODS
DEFAULT_METHOD = "serac"
COMMIT_METHOD = "memit"
AUDIT_MODES = ("background", "wait", "off")


def method_kind(method: str) -> str:
    """'memory' or 'weight'."""
    return "memory" if method in MEMORY_METHODS else "weight"


# -- limits ---------------------------------------------------------------------------------------------

DEFAULT_MAX_NEW_TOKENS = 80
MAX_TOKENS_LIMIT = 4096  # the most an API request may ask for
MAX_EDIT_CHARS = 500
