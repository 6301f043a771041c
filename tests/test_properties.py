"""Property-based tests (hypothesis): whatever a user types or sends, kbchat answers with a result or a
clear error — never a traceback, never a 500. 10,000 generated inputs for each entry point."""

from __future__ import annotations

import io
import string
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbchat.errors import KbchatError
from kbchat.parsing import parse_edit
from kbchat.records import ParsedEdit
from kbchat.tui.commands import Command, CommandError, parse_command
from tests.fake_service import FakeChatService

MANY = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck), database=None)

@pytest.fixture(autouse=True, scope="module")
def _no_user_config(tmp_path_factory):
    """A developer's own config file must not steer the CLI under test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KBCHAT_CONFIG", str(tmp_path_factory.mktemp("config") / "absent.toml"))
        yield


ARROWS = ["→", "->", "=>", "|", " "]
WORDS = st.text(alphabet=string.ascii_letters + string.digits + " .,'\"{}|-→!?é\t", max_size=30)
EDIT_TEXT = st.one_of(
    st.text(max_size=80),
    st.builds(lambda s, a, f: f"{s} {a} {f}", WORDS, st.sampled_from(ARROWS), WORDS),
    st.builds(lambda s, f, t: f"{s} → {s} {f} {t}", WORDS, WORDS, WORDS),
    st.builds(lambda s, p, t: f"{s} | {p} | {t}", WORDS, WORDS, WORDS),
)


@MANY
@given(EDIT_TEXT)
def test_the_edit_parser_returns_an_edit_or_a_parse_error(text: str) -> None:
    try:
        parsed = parse_edit(text)
    except KbchatError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(parsed, ParsedEdit)
    assert parsed.subject and parsed.target and parsed.subject.casefold() in parsed.prompt.casefold()


COMMANDS = ["/edit", "/edits", "/revert", "/audit", "/method", "/commit", "/help", "/clear", "/quit", "/x", "/"]
COMMAND_LINE = st.one_of(
    st.text(max_size=60),
    st.builds(lambda c, rest: f"{c} {rest}", st.sampled_from(COMMANDS), WORDS),
    st.builds(lambda c, rest: f"{c}{rest}", st.sampled_from(COMMANDS), WORDS),
)


@MANY
@given(COMMAND_LINE)
def test_slash_commands_parse_or_say_why_not(line: str) -> None:
    try:
        command = parse_command(line)
    except CommandError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert command is None or isinstance(command, Command)


CLI_WORDS = ["ask", "edit", "parse", "edits", "audit", "show", "revert", "commit", "verify", "config",
             "--json", "--method", "rome", "serac", "--status", "active", "--probe", "--hparams", "{}", "[1]",
             "--no-audit", "--max-tokens", "-3", "7", "--no-memory", "path", "show", "x", ""]
ARGV = st.lists(st.one_of(st.sampled_from(CLI_WORDS), st.text(max_size=20)), max_size=6)


@MANY
@given(ARGV)
def test_every_cli_command_exits_cleanly(argv: list[str]) -> None:
    from kbchat.cli import run

    fake = FakeChatService()
    out, err = io.StringIO(), io.StringIO()
    if argv and argv[0] in ("serve", "train-editor", "bench", "export"):
        argv = ["verify", *argv[1:]]  # those start servers, train, read data or write files
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = run(argv or ["edits"], open_chat=lambda **_: fake)
    except KbchatError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    except SystemExit as exc:  # --help
        assert exc.code in (0, None)
        return
    assert isinstance(code, int)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]),
                                 "content": st.one_of(st.text(max_size=40), JSON)})
BODIES = {
    "/v1/chat/completions": st.one_of(JSON, st.fixed_dictionaries(
        {"messages": st.lists(MESSAGE, max_size=3)},
        optional={"stream": JSON, "max_tokens": JSON, "n": JSON, "kbchat": JSON, "model": JSON})),
    "/v1/edits": st.one_of(JSON, st.fixed_dictionaries(
        {"text": st.one_of(EDIT_TEXT, JSON)},
        optional={"method": JSON | st.sampled_from(["rome", "serac", "ike"]), "probes": JSON, "hparams": JSON,
                  "audit": JSON | st.sampled_from(["off", "wait"]), "stream": JSON})),
    "/v1/parse": st.one_of(JSON, st.fixed_dictionaries({"text": st.one_of(EDIT_TEXT, JSON)})),
    "/v1/edits/commit": st.one_of(JSON, st.fixed_dictionaries({}, optional={"stream": JSON})),
}


@pytest.fixture(scope="module")
def api():
    from starlette.testclient import TestClient

    from kbchat.server import create_app

    with TestClient(create_app(FakeChatService(), token=None)) as client:
        yield client


@pytest.mark.parametrize("route", sorted(BODIES))
def test_every_api_body_gets_an_answer_or_an_error_object(api, route: str) -> None:
    @MANY
    @given(BODIES[route])
    def check(body) -> None:
        response = api.post(route, json=body)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and error["code"]

    check()
