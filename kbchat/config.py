"""Configuration in one place: the config file, the environment (every `KBCHAT_*` variable is read
here and nowhere else), the data dir, the ledger's statuses, the method names and the limits the front
ends share.

A setting comes from, strongest first: a command-line flag, its `KBCHAT_*` variable, the TOML config
file (`config_path()`), the default. `resolve()` says which one each setting came from.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from kbchat.errors import KbchatError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, a dependency on Python 3.10
    import tomli as tomllib

# -- the environment ------------------------------------------------------------------------------------

ENV_HOME = "KBCHAT_HOME"
ENV_DB = "KBCHAT_DB"
ENV_MODEL = "KBCHAT_MODEL"
ENV_TOKEN = "KBCHAT_TOKEN"
ENV_METHOD = "KBCHAT_METHOD"
ENV_SERVER = "KBCHAT_SERVER"
ENV_MAX_TOKENS = "KBCHAT_MAX_TOKENS"
ENV_DEVICE = "KBCHAT_DEVICE"
ENV_DTYPE = "KBCHAT_DTYPE"
ENV_THEME = "KBCHAT_THEME"
ENV_CONFIG = "KBCHAT_CONFIG"  # the config file's path (tests, or a second profile)
ENV_CRASH_AT = "KBCHAT_CRASH_AT"  # fault injection for tests: see kbchat.faults
ENV_LOCK_TIMEOUT = "KBCHAT_LOCK_TIMEOUT"  # seconds a ledger write waits for another process's lock
DEFAULT_LOCK_TIMEOUT_S = 30.0


def env(name: str) -> str | None:
    """The value of a `KBCHAT_*` variable, or None when unset or empty."""
    return os.environ.get(name) or None


def _home(home: str | os.PathLike[str] | None = None) -> Path:
    chosen = home or env(ENV_HOME) or file_setting("home") or platformdirs.user_data_dir("kbchat", appauthor=False)
    return Path(chosen).expanduser()


def data_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The data dir (created if missing): `home`, else $KBCHAT_HOME, else the config file's `home`,
    else the user data dir."""
    path = _home(home)
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url(home: str | os.PathLike[str] | None = None) -> str:
    """$KBCHAT_DB, else the config file's `db`, else an SQLite file in the data dir."""
    return env(ENV_DB) or file_setting("db") or f"sqlite:///{data_dir(home) / 'ledger.db'}"


def model_spec(spec: str | None = None) -> str | None:
    """--model, else $KBCHAT_MODEL, else the config file's `model`, else None (the default model)."""
    return spec or env(ENV_MODEL) or file_setting("model")


def model_dtype() -> str | None:
    """$KBCHAT_DTYPE, else the config file's `dtype`, else None (the device's default: float32 on CPU).
    One of `DTYPES`; ConfigError (one line) otherwise."""
    return _from_env("dtype") or file_setting("dtype")


def env_token() -> str | None:
    return env(ENV_TOKEN)


def lock_timeout_ms() -> int:
    """How long a ledger transaction waits for a lock another process holds: $KBCHAT_LOCK_TIMEOUT
    seconds, default 30."""
    raw = env(ENV_LOCK_TIMEOUT)
    try:
        seconds = float(raw) if raw is not None else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 86_400:
        raise ConfigError(f"{ENV_LOCK_TIMEOUT}={raw!r} is not a number of seconds between 0 and 86400")
    return int(seconds * 1000)


# -- the ledger and the methods -------------------------------------------------------------------------

STATUSES = ("active", "reverted", "failed", "superseded", "committed")
KINDS = ("memory", "weight")
MEMORY_METHODS = ("serac", "ike")
WEIGHT_METHODS = ("rome", "memit", "alphaedit", "ft", "mend", "instructedit", "kn")
LEARNED_METHODS = ("mend", "instructedit")  # need a trained editor (see kbchat.editors)
# Methods that work but are not yet good enough to trust; an edit made with one says so in its notes.
_LEARNED_NOTE = ("experimental: measured on CounterFact and zsRE prompts, not yet across chat questions; a chat "
                 "answer may name the new object beside the old context (\"Rome, France\"); "
                 "see methods/mend/editors/README.md")
EXPERIMENTAL = {"mend": _LEARNED_NOTE, "instructedit": _LEARNED_NOTE}
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


# Weight dtypes a model may be loaded in. Weight edits are computed and fingerprinted in the loaded dtype.
DTYPES = ("float32", "bfloat16")

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
    # serac's patch is checked on the relation's chat question when made: if the answer does not state
    # the new object, the patch is tried this many times as large, in order (kbchat.engine.strength).
    # Starting at half strength, with the follow-up check below, reads better at the same follow-up rate
    # (30 CounterFact train cases: told-fluency gap +10.0% against +15.3% for (1, 1.5, 2) without it,
    # follow-ups 86.7 both; bench/results/README.md, "A smaller patch").
    serac_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
    # How many of the relation's questions (its wordings, in order) that check asks; all must name the
    # new object. More wordings let a smaller first scale be tried without losing other phrasings.
    serac_check_wordings: int = 1
    # That check also asks the relation's question as a follow-up (subject named in an earlier turn).
    serac_check_follow_up: bool = True
    # serac's value is optimised keeping the model's own answer to the relation's question (KL away from
    # the replaced fact; methods.own_answer): the patched answer should read as the unedited one did.
    serac_own_answer: bool = False
    # serac answers are worded by the unpatched model, the patched one writing only the new object
    # (kbchat.runtime.steering): names stay whole and the wording is the model's own. On 200
    # CounterFact val cases the plain fluency gap is +0.4% against +18.8% for patched answers, with
    # reliability and follow-ups up (bench/results/README.md, "Steered answers").
    serac_steer: bool = True
    # ...the unpatched model then reading the conversation without the system message quoting the facts
    # (which this model does not follow, but which draws it into talk about the quoted text).
    serac_steer_unquoted: bool = True
    # ...and a steered answer whose first sentence misses the new object is replaced by the patched one
    # (without it, follow-ups fall: the unpatched wording can steer around the object).
    serac_steer_fallback: bool = True
    # Weight edits whose subject the conversation names are answered the same way (the edited weights
    # write the new object, the weights without those edits word the rest and the names): a weight
    # edit acts on every token, so otherwise it bends the subject's name when the answer writes it
    # (issue #12; bench/results/README.md, "Weight edits in chat"). Off: the edited weights alone.
    weight_steer: bool = True
    # A learned editor's update (MEND, InstructEdit) is sized by the library's step search on the raw
    # prompt, the smallest step at which the target wins there; that step can be too small for the chat
    # answer ("Where is the Eiffel Tower located?" -> "The Christiakosmos…" after the Rome edit at 0.25).
    # As serac's patch, it is then checked on the relation's chat question and tried this many times as
    # large, in order, until the answer names the new object; () skips the check. At most twice: the
    # library bounds its step by the drift it causes on unrelated text, this scale is not bounded so.
    # An edit that no scale carries into the chat answer and whose search fell short on the prompt too is
    # refused (EditFailed): it would change the weights without changing the answer.
    editor_scales: tuple[float, ...] = (1.0, 1.5, 2.0)
    context_tokens: int | None = None  # history budget of saved chats; None: the model's context size


# -- the config file ------------------------------------------------------------------------------------


class ConfigError(KbchatError):
    """The config file or a KBCHAT_* variable holds something kbchat cannot use."""

    code = "config_error"
    exit_code = 2


# Every key the file may hold: its type, its environment variable and what it means.
SETTINGS: dict[str, tuple[type, str | None, str]] = {
    "db": (str, ENV_DB, "ledger URL (SQLAlchemy), e.g. postgresql+psycopg://user@host/kbchat"),
    "device": (str, ENV_DEVICE, "cpu or cuda"),
    "home": (str, ENV_HOME, "data dir (model cache, statistics, the default SQLite ledger)"),
    "max_tokens": (int, ENV_MAX_TOKENS, "most tokens in an answer"),
    "method": (str, ENV_METHOD, "edit method when none is given"),
    "model": (str, ENV_MODEL, "Hugging Face model folder or .gguf file"),
    "server": (str, ENV_SERVER, "URL of a kbchat host to use instead of a local model"),
    "theme": (str, ENV_THEME, "TUI theme (a Textual theme name)"),
    "token": (str, ENV_TOKEN, "the host's bearer token"),
    "dtype": (str, ENV_DTYPE, "model weights: float32 (CPU default) or bfloat16 (faster on CPUs with AVX512-BF16)"),
}
SOURCES = ("default", "file", "env", "flag")


def config_path() -> Path:
    """$KBCHAT_CONFIG, else config.toml in the user config dir (which need not exist)."""
    chosen = env(ENV_CONFIG) or Path(platformdirs.user_config_dir("kbchat", appauthor=False)) / "config.toml"
    return Path(chosen).expanduser()


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The file's settings, checked; {} when there is no file. ConfigError (one line) otherwise."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the config file ({reason})") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from exc
    for key, value in values.items():
        if key not in SETTINGS:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(SETTINGS)})")
        wanted = SETTINGS[key][0]
        if not isinstance(value, wanted) or isinstance(value, bool):
            shown = type(value).__name__ if not isinstance(value, dict) else "table"
            raise ConfigError(f"{path}: {key} must be {_type_name(wanted)}, not {shown} ({value!r})")
        _check_value(key, value, f"{path}: {key}")
    return values


def file_setting(key: str) -> Any:
    """One setting from the config file, or None."""
    return read_config_file().get(key)


def _type_name(wanted: type) -> str:
    return {int: "an integer", str: "a string"}[wanted]


def _check_value(key: str, value: Any, where: str) -> None:
    if key == "method" and value not in ALL_METHODS:
        raise ConfigError(f"{where}: unknown method {value!r}; choose one of: {', '.join(ALL_METHODS)}")
    if key == "dtype" and value not in DTYPES:
        raise ConfigError(f"{where}: unknown dtype {value!r}; choose one of: {', '.join(DTYPES)}")
    if key == "max_tokens" and not 1 <= value <= MAX_TOKENS_LIMIT:
        raise ConfigError(f"{where}: must be between 1 and {MAX_TOKENS_LIMIT}, not {value}")
    if isinstance(value, str) and not value.strip():
        raise ConfigError(f"{where}: must not be empty")


def _from_env(key: str) -> Any:
    name = SETTINGS[key][1]
    raw = env(name) if name else None
    if raw is None:
        return None
    if SETTINGS[key][0] is int:
        try:
            value: Any = int(raw)
        except ValueError:
            raise ConfigError(f"${name}: must be an integer, not {raw!r}") from None
    else:
        value = raw
    _check_value(key, value, f"${name}")
    return value


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # one of SOURCES


@dataclass(frozen=True)
class Config:
    """Every setting with where it came from; `path` is the config file (which may not exist)."""

    path: Path
    settings: dict[str, Setting]

    def __getitem__(self, key: str) -> Any:
        return self.settings[key].value

    def given(self, key: str) -> Any:
        """The value unless it is the default: what to pass on so callees keep their own defaults."""
        setting = self.settings[key]
        return None if setting.source == "default" else setting.value

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(default_method=self["method"], max_new_tokens=self["max_tokens"])

    def lines(self) -> list[str]:
        """`kbchat config show`: the file, then one line per setting: value, source, meaning."""
        shown = self.to_json()
        state = "" if shown["exists"] else " (no such file: defaults, environment and flags only)"
        lines = [f"config file: {self.path}{state}"]
        for key, setting in shown["settings"].items():
            value = "-" if setting["value"] is None else setting["value"]
            lines.append(f"{key:<11} {str(value):<50} {setting['source']:<8} {SETTINGS[key][2]}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "exists": self.path.is_file(),
            "settings": {k: {"value": _shown(k, s.value), "source": s.source} for k, s in self.settings.items()},
        }


def _shown(key: str, value: Any) -> Any:
    """The value as `config show` prints it: the token hidden, any password in the ledger URL too."""
    if value is None:
        return None
    if key == "token":
        return "***"
    if key == "db" and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        credentials, at, host = rest.rpartition("@")
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        return f"{scheme}://{credentials}{at}{host}"
    return value


def resolve(flags: Mapping[str, Any] | None = None) -> Config:
    """Every setting: a flag that is not None, else its environment variable, else the config file,
    else the default. Raises ConfigError (one line, naming the key) for a bad file or variable."""
    path = config_path()
    in_file = read_config_file(path)
    flags = flags or {}
    resolved: dict[str, Setting] = {}
    for key in sorted(SETTINGS, key=lambda k: k != "home"):  # home first: db's default lives in it
        if flags.get(key) is not None:
            _check_value(key, flags[key], f"--{key.replace('_', '-')}")
            resolved[key] = Setting(flags[key], "flag")
        elif (from_env := _from_env(key)) is not None:
            resolved[key] = Setting(from_env, "env")
        elif key in in_file:
            resolved[key] = Setting(in_file[key], "file")
        else:
            resolved[key] = Setting(_default(key, resolved), "default")
    return Config(path, {key: resolved[key] for key in SETTINGS})


def _default(key: str, so_far: Mapping[str, Setting]) -> Any:
    if key == "home":
        return platformdirs.user_data_dir("kbchat", appauthor=False)
    if key == "db":
        return f"sqlite:///{Path(so_far['home'].value).expanduser() / 'ledger.db'}"
    return {"method": DEFAULT_METHOD, "max_tokens": DEFAULT_MAX_NEW_TOKENS}.get(key)
