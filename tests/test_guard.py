"""The name guard (issue #12): an answer that names an edited subject copies the name unpatched."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from kbchat.runtime.decoding import chat_input_ids, chat_text, stream_tokens
from kbchat.runtime.guard import CacheSwap, NameGuard, name_positions
from methods.architecture import architecture_of, get_module
from methods.delta import Delta, Update, weight_of
from methods.scoped import ScopedDeltas
from tests.tiny_models import one_thread, tiny


@pytest.fixture(scope="module")
def llama():
    with one_thread():
        yield tiny("llama")


def big_delta(model) -> Delta:
    name = architecture_of(model).mlp_out_name(1)
    out, inp = weight_of(get_module(model, name)).shape
    g = torch.Generator().manual_seed(1)
    return Delta("hand", (Update(name, torch.randn(out, 1, generator=g), torch.randn(inp, 1, generator=g)),))


MESSAGES = [{"role": "user", "content": "Where is the Eiffel Tower? Is the eiffel tower old?"}]


def test_naming_is_a_proper_prefix_that_starts_a_word():
    guard = NameGuard(("Eiffel Tower",), (), nullcontext)
    assert guard.naming("The Eiff") and guard.naming("the eiffel") and guard.naming("It is E")
    assert not guard.naming("The Eiffel Tower")  # whole: nothing left to copy
    assert not guard.naming("Bernard Giraud")
    assert not guard.naming("ThE")  # "E" inside a word


def test_name_positions_cover_every_occurrence(llama):
    _model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    text = chat_text(tok, MESSAGES)
    where = name_positions(tok, text, ids, ["Eiffel Tower"])
    covered = tok.decode(ids[0, list(where)])
    assert covered.lower().count("eiffel") == 2 and covered.lower().count("tower") == 2
    assert name_positions(tok, text, ids[:, :-1], ["Eiffel Tower"]) == ()  # ids that are not this text


def test_swap_restores_the_patched_cache(llama):
    model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    scoped = ScopedDeltas(model, positions="prompt")
    scoped.add("e", big_delta(model))
    with torch.no_grad():
        with scoped.select(["e"]):
            patched = model(input_ids=ids, use_cache=True).past_key_values
        clean = model(input_ids=ids, use_cache=True).past_key_values
    last = patched.layers[-1].keys.clone()
    swap = CacheSwap(patched, clean, [3, 4])
    with swap.unpatched():
        assert torch.equal(patched.layers[-1].keys[:, :, [3, 4]], clean.layers[-1].keys[:, :, [3, 4]])
    assert torch.equal(patched.layers[-1].keys, last)
    scoped.close()


def test_guard_changes_nothing_when_the_answer_names_no_subject(llama):
    model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    scoped = ScopedDeltas(model, positions="prompt")
    scoped.add("e", big_delta(model))
    where = name_positions(tok, chat_text(tok, MESSAGES), ids, ["Eiffel Tower"])
    with scoped.select(["e"]):
        plain = list(stream_tokens(model, tok, ids, 12))
        guarded = list(stream_tokens(model, tok, ids, 12, guard=NameGuard(("Zq#never",), where,
                                                                         lambda: scoped.select(()))))
    assert guarded == plain
    scoped.close()


def test_guarded_steps_read_the_names_unpatched(llama, monkeypatch):
    """With every step guarded and every input position a name's, the answer after its first token
    is what the unpatched model says given that first token."""
    model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    scoped = ScopedDeltas(model, positions="prompt")
    scoped.add("e", big_delta(model))
    monkeypatch.setattr(NameGuard, "naming", lambda self, text: True)
    everything = tuple(range(ids.shape[1]))
    with scoped.select(["e"]):
        guarded = "".join(stream_tokens(model, tok, ids, 10, guard=NameGuard(("x",), everything,
                                                                            lambda: scoped.select(()))))
        patched = "".join(stream_tokens(model, tok, ids, 10))
    first = tok(guarded, add_special_tokens=False)["input_ids"][:1]
    clean = "".join(stream_tokens(model, tok, torch.cat([ids, torch.tensor([first])], 1), 9))
    assert guarded == tok.decode(first) + clean
    assert guarded != patched  # the patch does change this answer: the guard made a difference
    scoped.close()


def test_stated_is_a_whole_word_match_of_a_target():
    guard = NameGuard(("Eiffel Tower",), (), nullcontext, ("Rome", "New York"))
    assert guard.stated("It is in rome.") and guard.stated("in New York, USA")
    assert not guard.stated("It is in Romeo's house") and not guard.stated("in Paris")
    assert not NameGuard(("x",), (), nullcontext).stated("Rome")  # no targets: never stated


def test_after_the_target_is_stated_the_steps_run_unpatched(llama, monkeypatch):
    """With the target 'stated' from the first token on, every later step runs without the patch on
    the step itself, while the prompt's positions stay patched in the cache."""
    model, tok = llama
    ids = chat_input_ids(tok, MESSAGES, "cpu")
    scoped = ScopedDeltas(model, positions="all")
    scoped.add("e", big_delta(model))
    monkeypatch.setattr(NameGuard, "stated", lambda self, text: bool(text))
    guard = NameGuard(("Zq#never",), (), lambda: scoped.select(()), ("anything",))
    with torch.no_grad(), scoped.select(["e"]):
        guarded = "".join(stream_tokens(model, tok, ids, 10, guard=guard))
        patched = "".join(stream_tokens(model, tok, ids, 10))
        out = model(input_ids=ids, use_cache=True)  # the patched prefill, then unpatched steps by hand
    first = int(out.logits[0, -1].argmax())
    past, step, new = out.past_key_values, torch.tensor([[first]]), [first]
    with torch.no_grad():
        for _ in range(9):
            out = model(input_ids=step, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
            new.append(token)
            step = torch.tensor([[token]])
    assert guarded == tok.decode(new, skip_special_tokens=True)
    assert guarded != patched  # the patch on the steps did matter
    scoped.close()
