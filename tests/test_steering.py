"""Steered decoding (issue #12): the unpatched model words the answer, the patched one the new object."""

from __future__ import annotations

import pytest
import torch

from kbchat.runtime.decoding import chat_input_ids, stream_tokens
from kbchat.runtime.guard import states
from kbchat.runtime.steering import held_until_stated, leads_into, steered_tokens
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
    unpatched = lambda: scoped.select(())  # noqa: E731
    with scoped.select(["e"]):
        steered = "".join(steered_tokens(model, tok, ids, 10, unpatched, [first.strip()]))
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
    with scoped.select(["e"]):
        steered = "".join(steered_tokens(model, tok, ids, 10, lambda: scoped.select(()), ["Zq#never"]))
    assert steered == clean
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
