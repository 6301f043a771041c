"""The CLI on a scripted service: every command, good and bad input, one-line errors, exit codes."""

from __future__ import annotations

import json

import pytest

from kbchat import cli
from kbchat.errors import KbchatError
from tests.fake_service import FakeChatService


def run(capsys, argv, service=None):
    service = service or FakeChatService()
    try:
        code = cli.run(argv, open_chat=lambda **_: service)
    except KbchatError as exc:  # what main() turns into one line + exit code
        code = exc.exit_code
        print(f"kbchat: error: {exc}", file=__import__("sys").stderr)
    out, err = capsys.readouterr()
    return code, out, err, service


def test_ask_prints_the_streamed_answer(capsys):
    code, out, err, _ = run(capsys, ["ask", "Where is the Eiffel Tower?"])
    assert code == 0 and "Paris" in out


def test_ask_json(capsys):
    code, out, _, _ = run(capsys, ["ask", "Where is the Eiffel Tower?", "--json"])
    data = json.loads(out)
    assert code == 0 and "Paris" in data["text"] and data["used_edits"] == []


def test_edit_then_edits_then_revert(capsys):
    service = FakeChatService()
    code, out, _, _ = run(capsys, ["edit", "Eiffel Tower → The Eiffel Tower is located in Rome", "--json"], service)
    edit = json.loads(out)
    assert code == 0 and edit["target"] == "Rome" and edit["status"] == "active"
    assert {"id", "subject", "prompt", "target", "method", "status"} <= set(edit)
    code, out, _, _ = run(capsys, ["edits", "--json"], service)
    assert [e["id"] for e in json.loads(out)] == [edit["id"]]
    code, out, _, _ = run(capsys, ["revert", str(edit["id"]), "--json"], service)
    assert code == 0 and json.loads(out)["status"] == "reverted"


@pytest.mark.parametrize(
    "argv",
    [
        ["edit", "Eiffel Tower is in Rome"],  # no arrow
        ["edit", "→ The Eiffel Tower is in Rome"],  # empty subject
        ["edit", "Eiffel Tower → Rome is nice"],  # fact does not mention the subject
        ["edit", "Eiffel Tower → " + "x" * 600],  # oversized
    ],
)
def test_bad_edit_text_is_one_line_and_nonzero(capsys, argv):
    code, out, err, service = run(capsys, argv)
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("kbchat: error:")
    assert service.edits() == []


@pytest.mark.parametrize(
    "argv",
    [
        [],  # handled separately (TUI) — not here
        ["revert"],
        ["revert", "abc"],
        ["edit", "A → A is B", "--method", "nope"],
        ["ask"],
        ["frobnicate"],
        ["edit", "A → A is in B", "--hparams", "{not json"],
        ["edit", "A → A is in B", "--hparams", "[1, 2]"],
        ["audit", "x"],
    ][1:],
)
def test_usage_errors(capsys, argv):
    code, out, err, _ = run(capsys, argv)
    assert code == cli.EXIT_USAGE
    assert err.strip().count("\n") == 0 and "kbchat: error:" in err


def test_unknown_ids(capsys):
    for argv in (["revert", "999"], ["audit", "999"]):
        code, _, err, _ = run(capsys, argv)
        assert code != 0 and "999" in err


def test_failed_edit_changes_nothing(capsys):
    from kbchat.errors import EditFailed

    service = FakeChatService(fail={"edit": EditFailed("rome could not compute the edit")})
    code, _, err, _ = run(capsys, ["edit", "Eiffel Tower → The Eiffel Tower is located in Rome"], service)
    assert code == EditFailed.exit_code and "could not compute" in err
    service.fail.clear()
    assert service.edits() == []


def test_main_turns_errors_into_one_line(monkeypatch, capsys, tmp_path):
    # A bad ledger URL fails before any model is loaded.
    monkeypatch.setenv("KBCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--db", "nosuchdialect://x", "edits"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0
    assert err.count("\n") == 1 and err.startswith("kbchat: error:")


def test_bad_model_path_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KBCHAT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", str(tmp_path / "missing"), "ask", "hi"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "no model at" in err and err.count("\n") == 1
