"""Configuration in one place: the environment (every `KBCHAT_*` variable is read here and nowhere
else), the data dir, the ledger's statuses, the method names and the limits the front ends share."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from kbchat.errors import KbchatError

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


def check_edit_options(method: str, hparams: Mapping[str, Any] | None, audit: str) -> None:
    """Refuse an unknown method or audit mode, or hyperparameters for a method that takes none."""
    if method not in ALL_METHODS:
        raise KbchatError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}")
    if audit not in AUDIT_MODES:
        raise KbchatError(f"unknown audit mode {audit!r}; choose one of: {', '.join(AUDIT_MODES)}")
    if hparams and method in MEMORY_METHODS and method != "serac":
        raise KbchatError(f"{method} takes no hyperparameters")


# -- limits ---------------------------------------------------------------------------------------------

DEFAULT_MAX_NEW_TOKENS = 80
MAX_TOKENS_LIMIT = 4096  # the most an API request may ask for
MAX_EDIT_CHARS = 500


@dataclass(frozen=True)
class EngineSettings:
    """How the local engine answers and edits."""

    default_method: str = DEFAULT_METHOD
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    # Also state in-scope serac facts, quoted, in a system message: models that follow context use
    # them; the in-model patch carries the edit for those (like the default) that do not.
    quote_facts: bool = True
    ike_demos: int = 16  # demonstrations in an IKE prompt
