"""The config file: flag > KBCHAT_* variable > file > default, errors that name the key, `kbchat config`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbchat import cli
from kbchat.config import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_METHOD,
    SETTINGS,
    ConfigError,
    EngineSettings,
    config_path,
    data_dir,
    default_db_url,
    model_spec,
    resolve,
)
from kbchat.errors import KbchatError
from tests.fake_service import FakeChatService

pytestmark = pytest.mark.usefixtures("clean_env")  # no KBCHAT_* from the caller, a temp config file


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], service=None) -> tuple[int, str, str]:
    try:
        code = cli.run(argv, open_chat=lambda **_: service or FakeChatService())
    except KbchatError as exc:
        out, err = capsys.readouterr()
        return exc.exit_code, out, f"{err}kbchat: error: {exc}"
    out, err = capsys.readouterr()
    return code, out, err


# --- the file ------------------------------------------------------------------------------------


def test_path_is_kbchat_config_or_the_user_config_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path() == clean_env
    monkeypatch.delenv("KBCHAT_CONFIG")
    assert config_path().name == "config.toml"
    assert config_path().parent.name == "kbchat"


def test_missing_file_gives_the_defaults(clean_env: Path) -> None:
    config = resolve()
    assert {key: s.source for key, s in config.settings.items()} == dict.fromkeys(SETTINGS, "default")
    assert config["method"] == DEFAULT_METHOD and config["max_tokens"] == DEFAULT_MAX_NEW_TOKENS
    assert config["db"] == f"sqlite:///{Path(config['home']) / 'ledger.db'}"
    assert config.given("method") is None and config.given("model") is None
    assert config.engine_settings() == EngineSettings()


def test_file_then_env_then_flag(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env, f'model = "file-model"\nmethod = "rome"\nmax_tokens = 50\nhome = "{tmp_path / "h"}"\n'
                     'db = "sqlite:////file.db"\ntheme = "nord"\nserver = "http://file:8000"\n')
    config = resolve()
    assert (config["model"], config.settings["model"].source) == ("file-model", "file")
    assert config.engine_settings() == EngineSettings(default_method="rome", max_new_tokens=50)
    assert config["home"] == str(tmp_path / "h") and config["theme"] == "nord"

    monkeypatch.setenv("KBCHAT_MODEL", "env-model")
    monkeypatch.setenv("KBCHAT_MAX_TOKENS", "60")
    monkeypatch.setenv("KBCHAT_SERVER", "http://env:8000")
    config = resolve()
    assert (config["model"], config.settings["model"].source) == ("env-model", "env")
    assert (config["max_tokens"], config.settings["max_tokens"].source) == (60, "env")
    assert config["server"] == "http://env:8000"
    assert (config["method"], config.settings["method"].source) == ("rome", "file")

    config = resolve({"model": "flag-model", "db": "sqlite:////flag.db", "server": None})
    assert (config["model"], config.settings["model"].source) == ("flag-model", "flag")
    assert (config["db"], config.settings["db"].source) == ("sqlite:////flag.db", "flag")
    assert config.settings["server"].source == "env"  # a flag that was not given does not count


def test_library_defaults_read_the_file(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env, f'model = "m.gguf"\nhome = "{tmp_path / "home"}"\n')
    assert model_spec() == "m.gguf" and model_spec("flag.gguf") == "flag.gguf"
    assert data_dir() == tmp_path / "home" and (tmp_path / "home").is_dir()
    assert default_db_url() == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    write(clean_env, 'db = "postgresql+psycopg://kb@db/kbchat"\n')
    assert default_db_url() == "postgresql+psycopg://kb@db/kbchat"
    monkeypatch.setenv("KBCHAT_DB", "sqlite:////env.db")
    assert default_db_url() == "sqlite:////env.db"


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('modle = "x"\n', r"config.toml: unknown key 'modle' \(known: db, device, home, max_tokens, method, model"),
        ('max_tokens = "80"\n', r"config.toml: max_tokens must be an integer, not str \('80'\)"),
        ("max_tokens = true\n", r"max_tokens must be an integer, not bool"),
        ("model = 3\n", r"config.toml: model must be a string, not int"),
        ("[model]\nname = 'x'\n", r"model must be a string, not table"),
        ('method = "rom"\n', r"config.toml: method: unknown method 'rom'; choose one of: serac, ike, rome"),
        ("max_tokens = 0\n", r"config.toml: max_tokens: must be between 1 and 4096, not 0"),
        ('db = ""\n', r"config.toml: db: must not be empty"),
        ('method = "rome\n', r"config.toml: not valid TOML: .*line 1"),
        ("model = 'a'\nmodel = 'b'\n", r"config.toml: not valid TOML"),
    ],
)
def test_bad_file_is_a_one_line_error_naming_the_key(clean_env: Path, text: str, message: str) -> None:
    write(clean_env, text)
    with pytest.raises(ConfigError, match=message) as raised:
        resolve()
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, KbchatError)


def test_bad_environment_variable_names_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBCHAT_MAX_TOKENS", "lots")
    with pytest.raises(ConfigError, match=r"\$KBCHAT_MAX_TOKENS: must be an integer, not 'lots'"):
        resolve()
    monkeypatch.setenv("KBCHAT_MAX_TOKENS", "10")
    monkeypatch.setenv("KBCHAT_METHOD", "magic")
    with pytest.raises(ConfigError, match=r"\$KBCHAT_METHOD: unknown method 'magic'"):
        resolve()


def test_unreadable_file_is_a_one_line_error(clean_env: Path) -> None:
    clean_env.mkdir()  # a directory where the file should be: reading it fails on any user
    with pytest.raises(ConfigError, match=r"config.toml: cannot read the config file \(Is a directory\)"):
        resolve()
    clean_env.rmdir()
    clean_env.write_bytes(b"model = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match="cannot read the config file") as raised:
        resolve()
    assert "\n" not in str(raised.value)


# --- the CLI -------------------------------------------------------------------------------------


def test_config_path(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["config", "path"], capsys)[:2] == (0, f"{clean_env}\n")
    code, out, _ = run_cli(["config", "path", "--json"], capsys)
    assert json.loads(out) == {"path": str(clean_env), "exists": False}


def test_config_show(clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env, 'method = "memit"\ntoken = "s3cret"\ndb = "postgresql+psycopg://kb:pw@db/kbchat"\n')
    monkeypatch.setenv("KBCHAT_MAX_TOKENS", "33")
    code, out, _ = run_cli(["--model", "flag.gguf", "config", "show"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"config file: {clean_env}"
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert set(rows) == set(SETTINGS)
    assert rows["method"] == ["memit", "file"]
    assert rows["max_tokens"] == ["33", "env"]
    assert rows["model"] == ["flag.gguf", "flag"]
    assert rows["theme"] == ["-", "default"]
    assert rows["token"] == ["***", "file"] and "s3cret" not in out
    assert rows["db"] == ["postgresql+psycopg://kb:***@db/kbchat", "file"] and "pw@" not in out

    code, out, _ = run_cli(["--model", "flag.gguf", "config", "show", "--json"], capsys)
    shown = json.loads(out)
    assert shown["path"] == str(clean_env) and shown["exists"] is True
    assert shown["settings"]["max_tokens"] == {"value": 33, "source": "env"}
    assert shown["settings"]["model"] == {"value": "flag.gguf", "source": "flag"}
    assert shown["settings"]["device"] == {"value": None, "source": "default"}


def test_config_show_without_a_file(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["config", "show"], capsys)
    assert code == 0
    assert out.splitlines()[0] == f"config file: {clean_env} (no such file: defaults, environment and flags only)"


def test_cli_bad_config_is_one_line_exit_2(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(clean_env, 'modle = "x"\n')
    for argv in (["config", "show"], ["edits"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and out == ""
        assert err.strip().count("\n") == 0 and "unknown key 'modle'" in err


def test_cli_opens_the_service_with_the_resolved_settings(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_env, 'db = "sqlite:////file.db"\nmodel = "file.gguf"\ndevice = "cpu"\nhome = "/file-home"\n'
                     'method = "rome"\nmax_tokens = 12\n')
    monkeypatch.setenv("KBCHAT_MODEL", "env.gguf")
    seen: dict = {}
    service = FakeChatService()
    edits, asks = [], []
    real_edit, real_stream = service.edit, service.stream
    monkeypatch.setattr(service, "edit", lambda text, **kw: edits.append(kw) or real_edit(text, **kw))
    monkeypatch.setattr(service, "stream", lambda text, **kw: asks.append(kw) or real_stream(text, **kw))

    def opener(**kwargs):
        seen.update(kwargs)
        return service

    assert cli.run(["--home", "/flag-home", "edit", "Paris → Paris is in Italy", "--json"], open_chat=opener) == 0
    assert (seen["db"], seen["model"], seen["device"], seen["home"]) == (
        "sqlite:////file.db", "env.gguf", "cpu", "/flag-home")
    assert edits[-1]["method"] == "rome"
    assert cli.run(["edit", "Paris → Paris is in Italy", "--method", "serac", "--json"], open_chat=opener) == 0
    assert edits[-1]["method"] == "serac"
    assert cli.run(["ask", "Where is Paris?", "--json"], open_chat=opener) == 0
    assert asks[-1]["max_new_tokens"] == 12
    assert cli.run(["ask", "Where is Paris?", "--json", "--max-tokens", "5"], open_chat=opener) == 0
    assert asks[-1]["max_new_tokens"] == 5
    capsys.readouterr()


def test_local_engine_gets_the_engine_settings(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env, 'method = "ike"\nmax_tokens = 21\n')
    from kbchat.engine import local

    opened: dict = {}

    def fake_open(**kwargs):
        opened.update(kwargs)
        raise KbchatError("stop here")

    monkeypatch.setattr(local.LocalEngine, "open", staticmethod(fake_open))
    with pytest.raises(KbchatError, match="stop here"):
        cli.run(["edits"])
    assert opened["settings"] == EngineSettings(default_method="ike", max_new_tokens=21)


def test_unknown_theme_names_the_choices(clean_env: Path) -> None:
    write(clean_env, 'theme = "no-such-theme"\n')
    with pytest.raises(KbchatError, match=r"unknown theme 'no-such-theme'.*choose one of: .*nord"):
        cli.run([], open_chat=lambda **_: FakeChatService())
