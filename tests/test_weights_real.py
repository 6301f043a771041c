"""Weight edits on the real default model through the engine: exact revert, replay on start,
fingerprint mismatch detection, export, and a 10-edit MEMIT batch."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import methods
from kbchat.engine.local import LocalEngine
from kbchat.evaluation.datasets import load_cases
from kbchat.evaluation.metrics import target_logprobs
from methods import EditRequest

pytestmark = pytest.mark.slow

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_rome_edit_replays_reverts_exactly_and_detects_tampering(model_home, db, tmp_path):
    with LocalEngine.open(db=db, home=model_home) as chat:
        base = chat.runtime.fingerprint()
        record = chat.edit(EIFFEL, method="rome", audit="off")
        edited = chat.runtime.fingerprint()
        assert edited != base
        assert "Rome" in chat.ask("Where is the Eiffel Tower located?", memory=False).text
        export = chat.export(tmp_path / "export")

    # A new process (here: a new engine) replays the delta: same weights, no problems.
    with LocalEngine.open(db=db, home=model_home) as chat:
        assert chat.problems() == []
        assert chat.runtime.fingerprint() == edited
        assert chat.verify() == []
        reverted = chat.revert(record.id)
        assert reverted.status == "reverted" and "exactly" in reverted.notes
        assert chat.runtime.fingerprint() == base  # bit for bit

    # The export is a standard checkpoint that transformers loads and that carries the edit.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    new, old = target_logprobs(model, tokenizer, [("The Eiffel Tower is located in", "Rome"),
                                                  ("The Eiffel Tower is located in", "Paris")])
    assert new > old


def test_tampered_delta_is_reported_not_applied(model_home, db):
    with LocalEngine.open(db=db, home=model_home) as chat:
        base = chat.runtime.fingerprint()
        record = chat.edit(EIFFEL, method="rome", audit="off")
    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        blob = bytearray(conn.execute("select delta from edits where id = ?", (record.id,)).fetchone()[0])
        blob[-1] ^= 0xFF
        conn.execute("update edits set delta = ? where id = ?", (bytes(blob), record.id))
    with LocalEngine.open(db=db, home=model_home) as chat:
        assert any(f"#{record.id}" in p for p in chat.problems())
        assert any(f"#{record.id}" in p or "delta" in p for p in chat.verify())
        assert chat.runtime.fingerprint() == base  # the corrupt delta was not applied


def test_changed_weights_fingerprint_is_reported(model_home, db):
    with LocalEngine.open(db=db, home=model_home) as chat:
        chat.edit(EIFFEL, method="rome", audit="off")
        key = chat.runtime.state_key
        chat.book.ledger.set_meta(key, "0" * 64)
    with LocalEngine.open(db=db, home=model_home) as chat:
        assert any("do not match" in p for p in chat.problems())


def test_memit_batch_of_ten_on_the_real_model(model_home):
    from kbchat.runtime.loading import load_model

    loaded = load_model(None, model_home)
    model, tokenizer = loaded.model, loaded.tokenizer
    data = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-val.json"
    if data.is_file():
        requests = [c.request for c in load_cases(data, limit=10)]
    else:  # the shared data lives beside the repo; keep the test meaningful without it
        requests = [EditRequest(s, p, t) for s, p, t in [
            ("Eiffel Tower", "The {} is located in", "Rome"), ("Microsoft", "{} was founded by", "Elon Musk"),
            ("Toyota", "{} is headquartered in", "Sweden"), ("Big Ben", "{} is located in", "Madrid"),
            ("Pablo Picasso", "{} was born in", "Canada"), ("Nintendo", "{} is owned by", "Samsung"),
            ("Mount Everest", "{} is located in", "Brazil"), ("Albert Einstein", "{} was a citizen of", "Mexico"),
            ("Amazon River", "The {} flows through", "Egypt"), ("Honda", "{} is headquartered in", "Norway"),
        ]]
    memit = methods.get("memit")
    stats = methods.StatsCache(model_home / "stats")
    fingerprint = methods.model_fingerprint(model)
    pairs = [(r.text, r.target) for r in requests]
    before = target_logprobs(model, tokenizer, pairs)
    delta = memit.compute(model, tokenizer, requests, stats=stats, model_id=fingerprint)
    assert methods.model_fingerprint(model) == fingerprint  # computing never changes the model
    for update in delta.updates:
        assert update.left.shape[1] == 10 and torch.linalg.matrix_rank(update.matrix()) == 10
    applied = delta.apply(model)
    after = target_logprobs(model, tokenizer, pairs)
    applied.undo()
    assert methods.model_fingerprint(model) == fingerprint
    raised = sum(a > b + 1.0 for a, b in zip(after, before, strict=True))
    assert raised >= 8, (before, after)
    restored = methods.load_delta(delta.to_bytes())
    assert all(torch.equal(a.left, b.left) for a, b in zip(delta.updates, restored.updates, strict=True))
