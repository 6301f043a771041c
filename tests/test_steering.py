"""Steered decoding (issue #12): the unpatched model words the answer, the patched one the new object."""

from __future__ import annotations

import pytest
import torch

from kbchat.runtime.decoding import chat_input_ids, stream_tokens
from kbchat.runtime.guard import states
from kbchat.runtime.steering import held_until_stated, leads_into, steered_tokens, takes_lead, within_name
from methods.scoped import ScopedDeltas
from tests.test_guard import MESSAGES, big_delta
from tests.tiny_models import one_thread, tiny


@pytest.fixture(scope="module")
def llama():
    with one_thread():
        yield tiny("llama")


def test_leads_into_a_target_from_a_word_start():
    assert leads_into("It is in Ro", ["Rome"]) and leads_into("It is in rome.", ["Rome"])
    assert leads_into("in New", ["New York"]) and leads_into("N", ["New York"])
    assert not leads_into("It is in Paris", ["Rome"]) and not leads_into("It is in Paro", ["Rome"])
    assert not leads_into("Stro", ["Rome"])  # "ro" inside a word
    assert not leads_into("anything", [" "]) and not states("Rome", [])


def test_the_unpatched_model_writes_a_subjects_name_once_begun():
    """Past a name's first word the patched model's token is not taken, even where it leads into the
    target ("Dehkhoda Russian Dictionary"); elsewhere it is, also after a word that merely starts a
    name ("in" / "Inverness Castle") or a one-word name's beginning."""
    names = ["Dehkhoda Dictionary", "Inverness Castle", "Wellington"]
    assert not takes_lead("The language of Dehkhoda", "The language of Dehkhoda Russian", ["Russian"], names)
    assert not takes_lead("The language of Dehkhoda Dic", "The language of Dehkhoda Dicrus", ["Dicrus"], names)
    assert takes_lead("The language of Dehkhoda", "The language of Dehkhoda Russian", ["Russian"])  # no names
    assert takes_lead("Inverness Castle is located in", "Inverness Castle is located in Rome", ["Rome"], names)
    assert takes_lead("Welling", "Wellingrome", ["Wellingrome"], names)  # one word: nothing past the first
    assert within_name("Dehkhoda", names) and within_name("It is Dehkhoda Dictio", names)
    assert not within_name("The language of Dehkhoda Dictionary", names)  # written whole: not inside it
    assert not within_name("Hyperdehkhoda", names) and not within_name("dehkhoda", names)  # as written only


def _first_token_text(model, tok, ids, scoped) -> str:
    with scoped.select(["e"]):
        return "".join(stream_tokens(model, tok, ids, 1))


def test_the_patched_model_writes_only_the_target(llama):
    """A target the patched model's first token leads into: that token, then the unpatched model's
    greedy continuation; the patched model alone would go on otherwise."""
    model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    scoped = ScopedDeltas(model, positions="prompt")
    scoped.add("e", big_delta(model))
    first = _first_token_text(model, tok, ids, scoped)
    clean_first = "".join(stream_tokens(model, tok, ids, 1))
    assert first.strip() and first != clean_first  # the patch changes the first token
    steered = "".join(steered_tokens(model, tok, ids, 10, lambda: scoped.select_rows([["e"], []]),
                                     lambda: scoped.select(()), [first.strip()]))
    with scoped.select(["e"]):
        patched = "".join(stream_tokens(model, tok, ids, 10))
    first_ids = tok(first, add_special_tokens=False)["input_ids"]
    rest = "".join(stream_tokens(model, tok, torch.cat([ids, torch.tensor([first_ids])], 1), 9))
    assert steered == first + rest
    assert steered != patched
    scoped.close()


def test_a_target_never_led_into_leaves_the_unedited_answer(llama):
    model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    scoped = ScopedDeltas(model, positions="prompt")
    scoped.add("e", big_delta(model))
    clean = "".join(stream_tokens(model, tok, ids, 10))
    steered = "".join(steered_tokens(model, tok, ids, 10, lambda: scoped.select_rows([["e"], []]),
                                     lambda: scoped.select(()), ["Zq#never"]))
    assert steered == clean
    scoped.close()


def test_the_unpatched_side_reads_its_own_shorter_prompt(llama):
    """`clean_ids` shorter than the patched prompt (its row left-padded in the batch): with no target
    led into, the answer is the unpatched model's own answer to `clean_ids`, token for token; with one,
    the patched model's first token and then the unpatched continuation of `clean_ids`."""
    model, tok = llama
    scoped = ScopedDeltas(model, positions="all")
    scoped.add("e", big_delta(model))
    ids = chat_input_ids(tok, [{"role": "system", "content": "The Eiffel Tower is in Rome. " * 12}, *MESSAGES], "cpu")
    clean_ids = chat_input_ids(tok, MESSAGES, "cpu")
    assert ids.shape[1] > clean_ids.shape[1] + 10
    side_by_side, unpatched = (lambda: scoped.select_rows([["e"], []])), (lambda: scoped.select(()))
    clean = "".join(stream_tokens(model, tok, clean_ids, 10))
    steered = "".join(steered_tokens(model, tok, ids, 10, side_by_side, unpatched, ["Zq#never"], clean_ids=clean_ids))
    assert steered == clean
    first = _first_token_text(model, tok, ids, scoped)
    steered = "".join(steered_tokens(model, tok, ids, 10, side_by_side, unpatched, [first.strip()], clean_ids=clean_ids))
    first_ids = tok(first, add_special_tokens=False)["input_ids"]
    rest = "".join(stream_tokens(model, tok, torch.cat([clean_ids, torch.tensor([first_ids])], 1), 9))
    assert steered == first + rest
    scoped.close()


def test_the_engine_steers_serac_answers_by_default(tiny_model_dir, tiny_home, tmp_path, embedder):
    """By default (`serac_steer`, `_unquoted`) the plan steers and leaves the quoted facts to the patched
    model; answers and the strength check run steered; `serac_steer=False` gives patched answers."""
    from dataclasses import replace

    from kbchat.config import EngineSettings
    from tests.engines import local_engine

    with one_thread():
        engine = local_engine(tiny_model_dir, tiny_home, tmp_path / "ledger.db", embedder)
        try:
            record = engine.edit("Eiffel Tower → The Eiffel Tower is located in Rome", audit="off")
            question = "Where is the Eiffel Tower?"
            plan = engine.planner.plan(question)
            assert record.id in plan.patches and plan.steer is not None and plan.steer.fallback
            assert plan.steer.without == (plan.prompt.messages[0],) and plan.prompt.messages[0]["role"] == "system"
            assert engine.ask(question, max_new_tokens=6).used_edits == (record.id,)
            engine.planner.settings = replace(EngineSettings(), serac_steer=False)
            assert engine.planner.plan(question).steer is None
            assert engine.planner.plan("What is the capital of Japan?").steer is None  # out of scope
        finally:
            engine.close()


def _pieces(*pieces: str):
    yield from pieces


def test_a_steered_answer_is_held_until_it_states_a_target():
    fallback = lambda: _pieces("fallback")  # noqa: E731
    assert list(held_until_stated(_pieces("It is", " in", " Rome", ", Italy."), fallback, ["Rome"])) == [
        "It is in Rome", ", Italy."]
    assert list(held_until_stated(_pieces("It is in Paris.", " Rome"), fallback, ["Rome"])) == ["fallback"]
    assert list(held_until_stated(_pieces("It is in Paris"), fallback, ["Rome"])) == ["fallback"]  # ended
    assert list(held_until_stated(_pieces("In", " Rome.", " Yes."), fallback, ["Rome"])) == ["In Rome.", " Yes."]


def test_weight_edits_the_conversation_names_are_worded_without_them(tiny_model_dir, tiny_home, tmp_path,
                                                                      embedder):
    """A weight edit whose subject the question (or an earlier turn) names, in any case or with a slip
    (then given to the model spelt as the edit has it), is steered: the model
    without it (its negation switched on as a patch, made when first needed and dropped once the
    edit is reverted) words the answer, exactly as before the edit; other questions are not."""
    from dataclasses import replace

    from kbchat.config import EngineSettings
    from kbchat.runtime.steering import Steer
    from tests.engines import local_engine

    question = "Where is the Eiffel Tower?"
    with one_thread():
        engine = local_engine(tiny_model_dir, tiny_home, tmp_path / "ledger.db", embedder)
        try:
            before = engine.ask(question, max_new_tokens=8).text
            record = engine.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="rome", audit="off")
            active = engine.book.ledger.active(kind="weight")
            plan = engine.planner.plan(question, weights=active)
            assert plan.weights == (record.id,) and plan.steer is not None and plan.steer.without == ()
            assert plan.names == ("Eiffel Tower",) and plan.targets == ("Rome",) and plan.patches == ()
            assert engine.planner.plan("What is the capital of Japan?", weights=active).weights == ()
            slip = engine.planner.plan("where is the eifel tower?", weights=active)  # the edited weights read
            assert slip.weights == (record.id,)  # the name as the edit spells it
            assert slip.prompt.messages[-1]["content"] == "where is the Eiffel Tower?"
            history = [{"role": "user", "content": "Tell me about the eiffel tower."},
                       {"role": "assistant", "content": "It is a tower."}]
            assert engine.planner.plan("Where is it?", history=history, weights=active).weights == (record.id,)
            assert engine.planner.plan(question, weights=active, exclude=frozenset({record.id})).weights == ()

            keys = engine.unedited.keys(plan.weights, active)
            assert keys and engine.runtime.has_patch(keys[0])
            worded = engine.runtime.generate(plan.prompt, (), 8, targets=("Zq#never",), steer=Steer(fallback=False),
                                             unedited=keys)
            assert "".join(worded).strip() == before
            engine.ask(question, max_new_tokens=4)
            assert engine.runtime.has_patch(keys[0])  # kept for the next answer naming the subject

            engine.planner.settings = replace(EngineSettings(), weight_steer=False)
            assert engine.planner.plan(question, weights=active).weights == ()
            engine.revert(record.id)
            engine.ask(question, max_new_tokens=2)
            assert not engine.runtime.has_patch(keys[0])
        finally:
            engine.close()


class _Runtime:
    """The patch table of a runtime: what `UneditedPatches` uses."""

    def __init__(self) -> None:
        self.patches: dict = {}

    def add_patch(self, key, delta) -> None:
        self.patches[key] = delta

    def remove_patch(self, key) -> None:
        self.patches.pop(key, None)

    def has_patch(self, key) -> bool:
        return key in self.patches


def _row(edit_id: int, corrupt: bool = False):
    import hashlib
    from types import SimpleNamespace

    from methods import Delta, Update

    data = Delta("rome", (Update("m", torch.ones(2, 1) * edit_id, torch.ones(3, 1)),)).to_bytes()
    return SimpleNamespace(id=edit_id, delta=data, delta_sha256="0" if corrupt else hashlib.sha256(data).hexdigest())


def test_negations_are_made_when_needed_kept_bounded_and_dropped_with_their_edit():
    from kbchat.engine.unedited import UneditedPatches

    runtime = _Runtime()
    patches = UneditedPatches(runtime, kept=2)
    rows = [_row(1), _row(2), _row(3), _row(4, corrupt=True)]
    (one,) = patches.keys([1], rows)
    assert torch.equal(runtime.patches[one].updates[0].matrix(), -torch.ones(2, 3))  # the negation
    patches.keys([2], rows)
    patches.keys([1], rows)  # 1 used again: 2 is now the least recently used
    patches.keys([3], rows)
    assert set(runtime.patches) == {("unedited", 1), ("unedited", 3)}
    assert patches.keys([1, 2, 3], rows) == (("unedited", 1), ("unedited", 2), ("unedited", 3))  # all asked: kept
    assert patches.keys([4], rows) == ()  # an unreadable delta: nothing to switch on
    assert set(runtime.patches) == {("unedited", 2), ("unedited", 3)}  # back to two
    patches.keys([], [rows[0], rows[2]])  # edit 2 reverted
    assert set(runtime.patches) == {("unedited", 3)}
