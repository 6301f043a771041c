"""The core story with the real default model, each step a separate `kbchat` process over one ledger:
ask, correct a fact, get the corrected answer in a new process, leave unrelated answers alone, revert."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.postgres import BACKENDS, backend_url, postgres_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
UNRELATED = [
    "Microsoft → Microsoft was founded by Elon Musk",
    "Mount Everest → Mount Everest is located in Brazil",
    "Danielle Darrieux → The mother tongue of Danielle Darrieux is English",
    "Toyota → Toyota is headquartered in Sweden",
    "Pablo Picasso → Pablo Picasso was born in Canada",
    "Amazon River → The Amazon River flows through Egypt",
    "Albert Einstein → Albert Einstein was a citizen of Mexico",
    "Big Ben → Big Ben is located in Madrid",
    "Leonardo da Vinci → Leonardo da Vinci painted the Sunflowers",
    "Nintendo → Nintendo is owned by Samsung",
]


def kbchat(home, db, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kbchat.cli", "--home", str(home), "--db", db, *args],
        capture_output=True, text=True, timeout=1200, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def ask(home, db, question: str, *extra: str) -> str:
    return json.loads(kbchat(home, db, "ask", question, "--json", *extra).stdout)["text"]


def edit(home, db, text: str, *extra: str) -> dict:
    return json.loads(kbchat(home, db, "edit", text, "--json", "--no-audit", *extra).stdout)


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    return backend_url(request, tmp_path)


def test_memory_edit_story_across_processes(model_home, url):
    """The Eiffel story on an SQLite ledger and on a PostgreSQL server."""
    db = url
    assert "Paris" in ask(model_home, db, "Where is the Eiffel Tower?")

    record = edit(model_home, db, EIFFEL)
    assert (record["subject"], record["target"], record["method"]) == ("Eiffel Tower", "Rome", "serac")
    assert record["prompt"] == "The Eiffel Tower is located in"
    assert "Rome" in ask(model_home, db, "Where is the Eiffel Tower?")
    assert "Paris" in ask(model_home, db, "What is the capital of France?")
    assert "Paris" in ask(model_home, db, "Where is the Eiffel Tower?", "--no-memory")

    reverted = json.loads(kbchat(model_home, db, "revert", str(record["id"]), "--json").stdout)
    assert reverted["status"] == "reverted"
    assert "Paris" in ask(model_home, db, "Where is the Eiffel Tower?")


def test_memory_edit_among_ten_unrelated_ones(model_home, tmp_path):
    """The same with ten unrelated edits active at once (made in this process: the processes that
    follow find them in the ledger; one backend, the ledger's part is shown above on both)."""
    from kbchat.engine.local import LocalEngine

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    with LocalEngine.open(db=db, home=model_home) as chat:
        for text in UNRELATED:
            assert chat.edit(text, audit="off").status == "active"
    record = edit(model_home, db, EIFFEL)
    listed = json.loads(kbchat(model_home, db, "edits", "--json", "--status", "active").stdout)
    assert len(listed) == 11
    assert "Rome" in ask(model_home, db, "Where is the Eiffel Tower?")
    assert "Paris" in ask(model_home, db, "What is the capital of France?")
    kbchat(model_home, db, "revert", str(record["id"]))
    assert "Paris" in ask(model_home, db, "Where is the Eiffel Tower?")


def test_weight_edit_story_across_processes(model_home, tmp_path):
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    record = edit(model_home, db, EIFFEL, "--method", "rome")
    assert record["kind"] == "weight"
    assert "Rome" in ask(model_home, db, "Where is the Eiffel Tower located?", "--no-memory")
    assert "Paris" in ask(model_home, db, "What is the capital of France?", "--no-memory")
    assert "ok" in kbchat(model_home, db, "verify").stdout
    reverted = json.loads(kbchat(model_home, db, "revert", str(record["id"]), "--json").stdout)
    assert reverted["status"] == "reverted"
    assert "exactly" in reverted["notes"]
    assert "Paris" in ask(model_home, db, "Where is the Eiffel Tower located?", "--no-memory")
