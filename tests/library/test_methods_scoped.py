"""ScopedDeltas: where a selected patch acts (the input, not generated tokens), per thread, and what a
removal does to a selection in use."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from methods.architecture import architecture_of, get_module
from methods.delta import Delta, Update, weight_of
from methods.scoped import ScopedDeltas
from tests.tiny_models import tiny


@pytest.fixture
def llama():
    model, tok = tiny("llama")
    return model, tok


def big_delta(model, seed: int = 1) -> Delta:
    """A rank-one update on one MLP output, large enough to move every logit visibly."""
    name = architecture_of(model).mlp_out_name(1)
    out, inp = weight_of(get_module(model, name)).shape
    g = torch.Generator().manual_seed(seed)
    return Delta("hand", (Update(name, torch.randn(out, 1, generator=g), torch.randn(inp, 1, generator=g)),))


def ids_of(tok, text: str = "Many tourists visit the tower and the museum") -> torch.Tensor:
    return tok(text, return_tensors="pt")["input_ids"]


@torch.no_grad()
def prefill_then_step(model, scoped, ids, next_id: int, select_prefill: dict | None, select_step: dict | None):
    """Logits of a prefill pass over `ids` and of one cached decoding step with `next_id`; each pass
    runs inside scoped.select(**select_*) when given."""
    def run(select, **kwargs):
        if select is None:
            return model(**kwargs)
        with scoped.select(**select):
            return model(**kwargs)

    first = run(select_prefill, input_ids=ids, use_cache=True)
    step = run(select_step, input_ids=torch.tensor([[next_id]]), past_key_values=first.past_key_values, use_cache=True)
    return first.logits[0], step.logits[0, -1]


def test_prompt_policy_patches_the_input_but_not_generated_tokens(llama):
    model, tok = llama
    scoped = ScopedDeltas(model)
    scoped.add("e", big_delta(model), positions="prompt")
    ids = ids_of(tok)
    base_first, base_step = prefill_then_step(model, scoped, ids, 5, None, None)
    first, step = prefill_then_step(model, scoped, ids, 5, {"keys": ["e"]}, {"keys": ["e"]})
    # the same patched cache, decoding step taken without any selection
    _, unpatched_step = prefill_then_step(model, scoped, ids, 5, {"keys": ["e"]}, None)
    assert not torch.allclose(first, base_first, atol=1e-4)  # the input is patched
    assert not torch.allclose(step, base_step, atol=1e-4)  # its effect reaches the answer through the cache
    assert torch.allclose(step, unpatched_step, atol=1e-6)  # but the generated position itself is not patched


def test_all_policy_also_patches_generated_tokens(llama):
    model, tok = llama
    scoped = ScopedDeltas(model)
    scoped.add("undo", big_delta(model), positions="all")
    ids = ids_of(tok)
    _, step = prefill_then_step(model, scoped, ids, 5, {"keys": ["undo"]}, {"keys": ["undo"]})
    _, unpatched_step = prefill_then_step(model, scoped, ids, 5, {"keys": ["undo"]}, None)
    assert not torch.allclose(step, unpatched_step, atol=1e-4)
    # and "all" equals the delta applied to the weights
    applied = big_delta(model).apply(model)
    try:
        _, in_weights = prefill_then_step(model, scoped, ids, 5, None, None)
    finally:
        applied.undo()
    assert torch.allclose(step, in_weights, atol=1e-4)


def test_a_removed_delta_stays_with_the_selections_already_made(llama):
    """Reverting an edit while an answer uses it: that answer keeps the patch to its end."""
    model, tok = llama
    scoped = ScopedDeltas(model, positions="all")
    scoped.add("e", big_delta(model))
    ids = ids_of(tok)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with scoped.select(["e"]):
            patched = model(input_ids=ids).logits
            scoped.remove("e")
            assert "e" not in scoped
            still = model(input_ids=ids).logits  # same selection: the delta is still there
        with scoped.select(["e"]):
            after = model(input_ids=ids).logits  # a new selection no longer finds it
    assert not torch.allclose(patched, base, atol=1e-4)
    assert torch.allclose(still, patched, atol=1e-6) and torch.allclose(after, base, atol=1e-6)


def test_selections_on_concurrent_threads_do_not_mix(llama):
    model, tok = llama
    scoped = ScopedDeltas(model, positions="prompt")
    scoped.add("e", big_delta(model))
    scoped.add("u", big_delta(model, seed=2), positions="all")
    ids = ids_of(tok)
    plans = {
        "none": (None, None),
        "prompt": ({"keys": ["e"]}, {"keys": ["e"]}),
        "all": ({"keys": ["u"]}, {"keys": ["u"]}),
    }
    expected = {name: prefill_then_step(model, scoped, ids, 5, *plan) for name, plan in plans.items()}
    barrier = threading.Barrier(len(plans))
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            torch.set_num_threads(1)
            barrier.wait()
            results[name] = [prefill_then_step(model, scoped, ids, 5, *plans[name]) for _ in range(5)]
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, runs in results.items():
        for first, step in runs:
            assert torch.allclose(first, expected[name][0], atol=1e-5), name
            assert torch.allclose(step, expected[name][1], atol=1e-5), name


def test_unknown_policy_and_close(llama):
    model, _ = llama
    with pytest.raises(ValueError, match="positions policy"):
        ScopedDeltas(model, positions="everywhere")
    scoped = ScopedDeltas(model)
    with pytest.raises(ValueError, match="positions policy"):
        scoped.add("e", big_delta(model), positions="subject")
    scoped.add("e", big_delta(model))
    copy.deepcopy(model)  # hooks hold no reference that cannot be copied (mixed precision copies the model)
    scoped.close()
    assert not model._forward_pre_hooks and not any(m._forward_hooks for m in model.modules())


@torch.no_grad()
def test_select_rows_gives_each_batch_row_its_own_deltas(llama):
    """Two copies of one input in a batch: row 0 with the delta, row 1 without, each as if alone; a
    pass whose batch does not match the rows is refused rather than patched wrongly."""
    model, tok = llama
    scoped = ScopedDeltas(model, positions="all")
    scoped.add("e", big_delta(model))
    ids = ids_of(tok)
    with scoped.select(["e"]):
        patched = model(input_ids=ids).logits[0]
    plain = model(input_ids=ids).logits[0]
    with scoped.select_rows([["e", "unknown"], []]):
        both = model(input_ids=ids.repeat(2, 1)).logits
    assert torch.allclose(both[0], patched, atol=1e-4) and torch.allclose(both[1], plain, atol=1e-4)
    assert not torch.allclose(patched, plain, atol=1e-3)
    with scoped.select_rows([["e"], [], ["e"]]), pytest.raises(ValueError, match="3 rows"):
        model(input_ids=ids.repeat(2, 1))
    scoped.close()
