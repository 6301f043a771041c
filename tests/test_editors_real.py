"""The shipped learned editors on the real default model through the CLI, as a user types it (issue #11):
`kbchat edit "Eiffel Tower → ..." --method instructedit|mend`, then the chat answer names the new city;
the edit is in the ledger as a weight edit and reverts bit for bit."""

from __future__ import annotations

import json

import pytest

from kbchat.cli import run

pytestmark = pytest.mark.slow

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"


@pytest.mark.parametrize("method", ["instructedit", "mend"])
def test_kbchat_edit_with_a_learned_editor_changes_the_chat_answer(model_home, tmp_path, capsys, method) -> None:
    common = ["--home", str(model_home), "--db", f"sqlite:///{tmp_path / 'ledger.db'}"]
    assert run([*common, "ask", "Where is the Eiffel Tower located?", "--no-memory", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)["text"]
    assert "Paris" in before and "Rome" not in before
    assert run([*common, "edit", EIFFEL, "--method", method, "--no-audit", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["method"], record["kind"], record["target"]) == (method, "weight", "Rome")
    assert run([*common, "ask", "Where is the Eiffel Tower located?", "--no-memory", "--json"]) == 0
    assert "Rome" in json.loads(capsys.readouterr().out)["text"]
    assert run([*common, "revert", str(record["id"]), "--json"]) == 0
    capsys.readouterr()
    assert run([*common, "ask", "Where is the Eiffel Tower located?", "--no-memory", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == before  # reverted exactly: the same answer
