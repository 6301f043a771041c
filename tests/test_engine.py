"""The local engine on a tiny random model: what only it can show (concurrency with the patch table,
crashes between the ledger's writes). The behaviour every implementation shares is in tests/contract."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kbchat.ledger import Ledger

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
BERLIN = "Eiffel Tower → The Eiffel Tower is located in Berlin"
QUESTION = "Where is the Eiffel Tower?"
ROOT = Path(__file__).resolve().parents[1]


def test_reverting_a_serac_edit_while_four_answers_use_it(tiny_engine) -> None:
    """100 rounds: 4 answers are streaming with the edit's patch when it is reverted. None fails, and
    each is the answer with the edit, whole (the patch stays with the answers that selected it)."""
    record = tiny_engine.edit(EIFFEL, audit="off")
    with_edit = tiny_engine.ask(QUESTION, max_new_tokens=16)
    assert with_edit.used_edits == (record.id,)
    tiny_engine.revert(record.id)
    without = tiny_engine.ask(QUESTION, max_new_tokens=16)
    assert without.text != with_edit.text  # else the test could not tell the two apart
    for round_ in range(100):
        record = tiny_engine.edit_request(_request(tiny_engine), method="serac", audit="off") if round_ else \
            tiny_engine.edit(EIFFEL, audit="off")
        answers, errors = _stream_through_revert(tiny_engine, record.id, 4)
        assert errors == []
        assert [(a.text, a.used_edits) for a in answers] == [(with_edit.text, (record.id,))] * 4
        assert tiny_engine.ask(QUESTION, max_new_tokens=16).text == without.text


def _stream_through_revert(tiny_engine, edit_id: int, n: int) -> tuple[list, list[BaseException]]:
    """`n` answers stream; once each has its first piece, `edit_id` is reverted; then they finish."""
    started = threading.Barrier(n + 1)
    reverted = threading.Event()
    answers: list = []
    errors: list[BaseException] = []

    def answer() -> None:
        try:
            stream = tiny_engine.stream(QUESTION, max_new_tokens=16)
            for i, _piece in enumerate(stream):
                if i == 0:
                    started.wait(30)
                    reverted.wait(30)
            answers.append(stream.answer)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=answer) for _ in range(n)]
    for t in threads:
        t.start()
    started.wait(30)  # every answer has its first piece: the patch is in use
    tiny_engine.revert(edit_id)
    reverted.set()
    for t in threads:
        t.join(60)
    return answers, errors


def _request(tiny_engine):
    """The Eiffel request as the parser made it (re-used so each round computes the same patch)."""
    from methods import EditRequest

    first = tiny_engine.edits()[0]
    return EditRequest(first.subject, first.prompt, first.target, first.target_true)


def _kbchat(args: list[str], tiny_model_dir: Path, tiny_home: Path, db: str, crash: str | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "KBCHAT_HOME": str(tiny_home), "KBCHAT_DB": db,
           "KBCHAT_MODEL": str(tiny_model_dir)}
    env.pop("KBCHAT_CRASH_AT", None)
    if crash:
        env["KBCHAT_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "kbchat.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("method", ["serac", "rome"])
def test_a_kill_inside_a_revert_leaves_one_consistent_state(tiny_engine, tiny_model_dir, tiny_home, tmp_path, method) -> None:
    """kill -9 between the writes of a revert: the ledger verifies, and reopens as before the revert."""
    older = tiny_engine.edit(EIFFEL, method=method, audit="off")
    newer = tiny_engine.edit(BERLIN, method=method, audit="off")
    tiny_engine.close()
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    killed = _kbchat(["revert", str(newer.id)], tiny_model_dir, tiny_home, db, crash="ledger.revert")
    assert killed.returncode == -9, killed.stderr
    with Ledger.open(db) as ledger:
        states = {e.id: e.status for e in ledger.edits()}
    expected = {older.id: "superseded" if method == "serac" else "active", newer.id: "active"}
    assert states == expected
    verify = _kbchat(["verify"], tiny_model_dir, tiny_home, db)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    done = _kbchat(["revert", str(newer.id)], tiny_model_dir, tiny_home, db)
    assert done.returncode == 0, done.stderr
    with Ledger.open(db) as ledger:
        assert {e.id: e.status for e in ledger.edits()} == {older.id: "active", newer.id: "reverted"}
    assert _kbchat(["verify"], tiny_model_dir, tiny_home, db).returncode == 0


# A commit records through the same transaction as a weight edit (the tiny model fails commit's own
# reliability check before it gets there, so it is not among these).
@pytest.mark.parametrize("argv", [["edit", EIFFEL, "--method", "rome", "--no-audit"], ["edit", EIFFEL, "--no-audit"]])
def test_a_kill_while_recording_leaves_the_ledger_as_it_was(tiny_engine, tiny_model_dir, tiny_home, tmp_path, argv) -> None:
    """kill -9 inside the transaction that records a weight edit or a memory edit."""
    tiny_engine.edit(BERLIN, audit="off")
    before = [(e.id, e.status) for e in tiny_engine.edits()]
    tiny_engine.close()
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    killed = _kbchat(argv, tiny_model_dir, tiny_home, db, crash="ledger.record")
    assert killed.returncode == -9, killed.stderr
    with Ledger.open(db) as ledger:
        assert [(e.id, e.status) for e in ledger.edits()] == before
    assert _kbchat(["verify"], tiny_model_dir, tiny_home, db).returncode == 0


def test_several_edits_touching_one_question_all_act(tiny_engine) -> None:
    """Two serac edits named in one question are both in scope, and both patches are switched on."""
    eiffel = tiny_engine.edit(EIFFEL, audit="off")
    louvre = tiny_engine.edit("Louvre Museum → The Louvre Museum is located in Madrid", audit="off")
    try:
        question = "Is the Eiffel Tower in the same city as the Louvre Museum?"
        plan = tiny_engine.planner.plan(question)
        assert set(plan.patches) == {eiffel.id, louvre.id} and set(plan.names) == {"Eiffel Tower", "Louvre Museum"}
        answer = tiny_engine.ask(question, max_new_tokens=8)
        assert set(answer.used_edits) == {eiffel.id, louvre.id}
        one = tiny_engine.runtime.score(_first_logits, [(question, "Rome")], patches=(eiffel.id,))
        both = tiny_engine.runtime.score(_first_logits, [(question, "Rome")], patches=plan.patches)
        assert one != both  # the second patch changes what the model computes
    finally:
        tiny_engine.revert(louvre.id)
        tiny_engine.revert(eiffel.id)


def _first_logits(model, tokenizer, pairs):
    import torch

    ids = tokenizer(pairs[0][0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return [model(input_ids=ids).logits[0, -1, :8].tolist()]


@pytest.mark.parametrize("change", ["edit", "revert"])
def test_an_answer_waiting_through_a_weight_change_is_planned_on_the_weights_it_reads(tiny_engine, change) -> None:
    """An answer is planned (which weight edits it names, their negation patches) when it is asked and
    generated when the weights are free; a weight edit or revert landing in between must not leave it
    reading the new weights with the old plan: it is answered as a fresh question would be then."""
    if change == "revert":
        record = tiny_engine.edit(EIFFEL, method="rome", audit="off")
        stream = tiny_engine.stream(QUESTION, max_new_tokens=16)  # planned with the edit (and its negation)
        tiny_engine.revert(record.id)
    else:
        stream = tiny_engine.stream(QUESTION, max_new_tokens=16)  # planned with no weight edit
        record = tiny_engine.edit(EIFFEL, method="rome", audit="off")
    text = "".join(stream).strip()
    fresh = tiny_engine.ask(QUESTION, max_new_tokens=16)
    got = stream.answer
    assert (text, got.weight_edits, got.weights) == (fresh.text, fresh.weight_edits, fresh.weights)
    assert got.weight_edits == ((record.id,) if change == "edit" else ())


def test_an_answer_whose_weights_keep_changing_gives_up_with_a_clear_error(tiny_engine, monkeypatch) -> None:
    """Every plan is stale by the time it reads the weights: after a bounded number of plans the answer
    ends with an error saying so, not a loop and not an answer read on the wrong plan."""
    import itertools

    from kbchat.errors import KbchatError
    from kbchat.runtime import ModelRuntime

    ahead = itertools.count(10**6)  # never the runtime's own count
    monkeypatch.setattr(ModelRuntime, "version", property(lambda self: next(ahead)))
    stream = tiny_engine.stream(QUESTION, max_new_tokens=4)
    with pytest.raises(KbchatError, match="the weights changed 8 times while this answer waited"):
        "".join(stream)
    assert stream.answer is not None and stream.answer.text == "" and stream.answer.tokens == 0
