"""`kbchat chats …` and `kbchat ask --chat` on the scripted service (its chats kept in a file, as a
local ledger keeps them between commands)."""

from __future__ import annotations

import json

import pytest

from tests.fake_service import FakeChatService
from tests.test_cli import run


@pytest.fixture
def service(tmp_path):
    return FakeChatService(chats_db=str(tmp_path / "chats.db"))


def test_ask_in_a_new_chat_then_continue_it(capsys, service):
    code, out, _, _ = run(capsys, ["ask", "--chat", "new", "Where is the Eiffel Tower?", "--json"], service)
    first = json.loads(out)
    assert code == 0 and "Paris" in first["text"] and first["message_id"] == 2 and first["dropped"] == 0
    code, out, _, _ = run(capsys, ["chats", "--json"], service)
    (listed,) = json.loads(out)
    assert listed["title"] == "Where is the Eiffel Tower?" and listed["messages"] == 2
    code, out, _, _ = run(capsys, ["ask", "--chat", str(listed["id"]), "And the capital of France?"], service)
    assert code == 0 and "Paris" in out
    # the second question was asked with the first turn as history
    (asked,) = [c for c in service.calls if c[:2] == ("stream", "And the capital of France?")]
    assert [m["role"] for m in asked[2]] == ["user", "assistant"] and "Paris" in asked[2][1]["content"]
    code, out, _, _ = run(capsys, ["chats", "show", str(listed["id"])], service)
    assert out.count("you:") == 2 and out.count("kbchat:") == 2 and "no edits used" in out


def test_list_search_export_rename_delete(capsys, service, tmp_path):
    service.say(service.new_chat().id, "Where is the Eiffel Tower?").result()
    code, out, _, _ = run(capsys, ["chats"], service)
    assert code == 0 and "#1" in out and "Where is the Eiffel Tower?" in out
    code, out, _, _ = run(capsys, ["chats", "search", "PARIS", "--json"], service)
    assert [h["message_id"] for h in json.loads(out)] == [2]
    code, out, err, _ = run(capsys, ["chats", "search", "nowhere to be found"], service)
    assert code == 0 and out == "" and "no message contains" in err
    target = tmp_path / "chat.md"
    code, _, err, _ = run(capsys, ["chats", "export", "1", "-o", str(target)], service)
    assert code == 0 and "wrote chat #1" in err
    assert target.read_text().startswith("# Where is the Eiffel Tower?") and "**You**" in target.read_text()
    code, out, _, _ = run(capsys, ["chats", "export", "1", "--format", "json"], service)
    exported = json.loads(out)
    assert exported["format"] == "kbchat-chat/1" and len(exported["messages"]) == 2
    code, out, _, _ = run(capsys, ["chats", "rename", "1", "Towers"], service)
    assert code == 0 and "'Towers'" in out
    code, _, err, _ = run(capsys, ["chats", "delete", "1"], service)
    assert code == 2 and "--yes" in err and service.chats() != []
    code, out, _, _ = run(capsys, ["chats", "delete", "1", "--yes"], service)
    assert code == 0 and service.chats() == []


@pytest.mark.parametrize("argv", [
    ["chats", "show", "99"],
    ["chats", "export", "99"],
    ["ask", "--chat", "99", "Where?"],
    ["ask", "--chat", "abc", "Where?"],
    ["chats", "search", "   "],
    ["chats", "rename", "1", "   "],
])
def test_bad_chat_input_is_one_line_and_nonzero(capsys, service, argv):
    service.new_chat()
    code, out, err, _ = run(capsys, argv, service)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("kbchat: error:")
    assert [c.messages for c in service.chats()] == [0]  # nothing was saved by the failed command


def test_export_to_an_unwritable_place_fails_cleanly(capsys, service, tmp_path):
    service.say(service.new_chat().id, "Where is the Eiffel Tower?").result()
    code, _, err, _ = run(capsys, ["chats", "export", "1", "-o", str(tmp_path / "no" / "such" / "dir.md")], service)
    assert code == 2 and err.startswith("kbchat: error: cannot write")
