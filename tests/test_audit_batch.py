"""The audit's generations batched and shared: the batched greedy decoder against one-at-a-time
decoding, `LiveEditView.answers` against one-by-one answers on a tiny engine, and the answer cache
across audits (used while the weights stay, not once an edit changed them)."""

from __future__ import annotations

import pytest
import torch

from kbchat.audit import plan_probes
from kbchat.audit.answers import AnswerCache
from kbchat.audit.live import LiveEditView
from kbchat.runtime.decoding import (
    MIN_SHARED_PREFIX,
    PLAIN_STOPS,
    batch_greedy,
    chat_input_ids,
    completion_input_ids,
    greedy_text,
    shared_prefix,
)
from tests.tiny_models import FACTS, one_thread, tiny

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
BIG_BEN = "Big Ben → Big Ben is located in Cairo"
PROMPTS = [f"{subject} is located in" for subject, _true, _new in FACTS] + [
    "The",
    "Tell me about the museum. What do you know about the bridge? She wrote a letter to her brother and",
]


# ------------------------------------------------------------------------------------------------
# The batched decoder


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_and_tokenizer(request):
    with one_thread():
        yield tiny(request.param)


@pytest.mark.parametrize("stops", [(), (".",), PLAIN_STOPS, None])
def test_batched_greedy_equals_one_at_a_time(model_and_tokenizer, stops) -> None:
    """Prompts of 1 to ~20 tokens; None: a stop string the first answer says partway (so it acts)."""
    model, tokenizer = model_and_tokenizer
    inputs = [completion_input_ids(tokenizer, p, "cpu") for p in PROMPTS]
    assert len({int(x.shape[-1]) for x in inputs}) > 3
    with one_thread():
        free = greedy_text(model, tokenizer, inputs[0], 20)
        derived = stops is None
        if derived:
            stops = (free.strip()[6:9],)
        single = [greedy_text(model, tokenizer, x, 20, stops) for x in inputs]
        assert batch_greedy(model, tokenizer, inputs, 20, stops) == single
    if derived:
        assert len(single[0]) < len(free)  # the stop string did cut the first answer


def test_batched_greedy_stops_each_row_at_its_own_eos(model_and_tokenizer) -> None:
    """A token one row says third becomes EOS: that row ends there, the others go on (or end too)."""
    model, tokenizer = model_and_tokenizer
    inputs = [completion_input_ids(tokenizer, p, "cpu") for p in PROMPTS]
    with one_thread():
        ids = greedy_ids(model, inputs[0], 3)  # the first row's third token will be EOS
        saved = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = ids[2]
        try:
            single = [greedy_text(model, tokenizer, x, 16) for x in inputs]
            batched = batch_greedy(model, tokenizer, inputs, 16)
        finally:
            model.generation_config.eos_token_id = saved
    assert batched == single
    assert len(single[0]) < len(greedy_text(model, tokenizer, inputs[0], 16))  # the EOS did end that row


def greedy_ids(model, input_ids: torch.Tensor, n: int) -> list[int]:
    """The first `n` greedy token ids after `input_ids`, without a cache (a reference, slow)."""
    ids = input_ids
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=-1)
    return out


def test_batched_greedy_in_the_chat_format() -> None:
    with one_thread():
        model, tokenizer = tiny("llama")
        inputs = [chat_input_ids(tokenizer, [{"role": "user", "content": f"Where is the {s}?"}], "cpu")
                  for s, _true, _new in FACTS]
        inputs.append(chat_input_ids(tokenizer, [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"}], "cpu"))
        single = [greedy_text(model, tokenizer, x, 24) for x in inputs]
        assert batch_greedy(model, tokenizer, inputs, 24) == single


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_prefix_all_rows_share_is_computed_once(arch) -> None:
    """Rows opening alike (as chat prompts do, with the template's system turn) share one pass over
    that prefix; the answers are still each row's own."""
    with one_thread():
        model, tokenizer = tiny(arch)
        opening = "The museum guide said this about the city and the tower today:"
        inputs = [completion_input_ids(tokenizer, f"{opening} {p}", "cpu") for p in PROMPTS[:5]]
        shared = shared_prefix(inputs)
        assert shared >= MIN_SHARED_PREFIX
        lengths: list[int] = []
        handle = model.register_forward_pre_hook(
            lambda _m, _a, kw: lengths.append(int(kw["input_ids"].shape[-1])), with_kwargs=True)
        try:
            batched = batch_greedy(model, tokenizer, inputs, 12)
        finally:
            handle.remove()
        assert lengths[0] == shared and lengths[1] == max(int(x.shape[-1]) for x in inputs) - shared
        assert batched == [greedy_text(model, tokenizer, x, 12) for x in inputs]
    assert shared_prefix(inputs[:1]) == 0 and shared_prefix([inputs[0], inputs[0]]) == inputs[0].shape[-1] - 1


# ------------------------------------------------------------------------------------------------
# The live view on a tiny engine


class Spy:
    """Counts the generations the runtime makes: one per `generate`, one per row of `generate_many`."""

    def __init__(self, runtime, monkeypatch) -> None:
        self.single = 0
        self.batched: list[int] = []
        generate, generate_many = runtime.generate, runtime.generate_many

        def one(*args, **kwargs):
            self.single += 1
            return generate(*args, **kwargs)

        def many(prompts, *args, **kwargs):
            self.batched.append(len(prompts))
            return generate_many(prompts, *args, **kwargs)

        monkeypatch.setattr(runtime, "generate", one)
        monkeypatch.setattr(runtime, "generate_many", many)

    @property
    def rows(self) -> int:
        return self.single + sum(self.batched)


def requests_of(view) -> list[tuple[str, str]]:
    return [(p.kind, p.text) for p in plan_probes(view.request, user_probes=["Where is the Eiffel Tower? → Rome"])]


def unbatched(tiny_engine, view: LiveEditView) -> LiveEditView:
    """The same edit seen one generation at a time, sharing nothing."""
    return LiveEditView(tiny_engine.runtime, tiny_engine.planner, view.row, view.undo_key, batch=False,
                        weight_edits=view.weight_edits, unedited=view.unedited)


@pytest.mark.parametrize("method", ["serac", "rome"])
def test_batched_answers_equal_one_by_one(tiny_engine, method, monkeypatch) -> None:
    record = tiny_engine.edit(EIFFEL, method=method, audit="off")
    view = tiny_engine.audit_view(record.id)
    requests = requests_of(view)
    spy = Spy(tiny_engine.runtime, monkeypatch)
    with one_thread():
        batched = {edited: view.answers(requests, edited=edited) for edited in (False, True)}
    assert spy.batched and max(spy.batched) > 1  # some were decoded together
    if method == "serac":
        assert spy.single > 0  # answers with the patch switched on keep the name guard, one at a time
    reference = unbatched(tiny_engine, view)
    with one_thread():
        for edited in (False, True):
            assert batched[edited] == [
                reference.generate(text, edited=edited) if kind == "question" else reference.complete(text, edited=edited)
                for kind, text in requests
            ]


def test_a_second_audit_reuses_answers_until_the_weights_change(tiny_engine, monkeypatch) -> None:
    memory = tiny_engine.edit(EIFFEL, audit="wait")
    first = tiny_engine.get_edit(memory.id).checks
    assert first and len(tiny_engine.answer_cache) > 0
    spy = Spy(tiny_engine.runtime, monkeypatch)
    hits = tiny_engine.answer_cache.hits
    tiny_engine.audits.start(memory.id, (), "wait")  # the same audit again: weights unchanged
    again = tiny_engine.get_edit(memory.id).checks
    assert again[len(first):] == first  # the same checks
    assert tiny_engine.answer_cache.hits - hits > 10
    warm = spy.rows

    weights = tiny_engine.book.ledger.get_meta(tiny_engine.runtime.state_key)
    tiny_engine.edit(BIG_BEN, method="rome", audit="off")
    assert tiny_engine.book.ledger.get_meta(tiny_engine.runtime.state_key) != weights
    spy.single, spy.batched = 0, []
    hits = tiny_engine.answer_cache.hits
    view = tiny_engine.audit_view(memory.id)
    requests = requests_of(view)
    with one_thread():
        after = {edited: view.answers(requests, edited=edited) for edited in (False, True)}
    assert tiny_engine.answer_cache.hits == hits  # nothing of the old weights is used
    assert spy.rows > warm
    reference = unbatched(tiny_engine, view)
    with one_thread():
        for edited in (False, True):
            assert after[edited] == [reference.generate(t, edited=edited) if k == "question"
                                     else reference.complete(t, edited=edited) for k, t in requests]


@pytest.mark.parametrize("method", ["serac", "rome"])
def test_log_probabilities_and_accuracies_come_from_one_teacher_forced_pass(tiny_engine, method,
                                                                           monkeypatch) -> None:
    record = tiny_engine.edit(EIFFEL, method=method, audit="off")
    view = tiny_engine.audit_view(record.id)
    pairs = [("The Eiffel Tower is located in", "Rome"), ("The Eiffel Tower is located in", "Paris"),
             ("Big Ben is in", "London")]
    calls: list[int] = []
    score = tiny_engine.runtime.score
    monkeypatch.setattr(tiny_engine.runtime, "score", lambda fn, batch, patches=(): calls.append(len(batch))
                        or score(fn, batch, patches))
    with one_thread():
        for edited in (False, True):
            lps = view.logprobs(pairs, edited=edited)
            passes = len(calls)
            accs = view.token_accuracies(pairs[:2], edited=edited)
            assert len(calls) == passes  # the accuracies came with the log-probabilities
            fresh = LiveEditView(tiny_engine.runtime, tiny_engine.planner, view.row, view.undo_key)
            assert fresh.token_accuracies(pairs[:2], edited=edited) == accs  # asked first, the same
            # the third pair is scored alone here, in a batch of three above: a different batch
            # shape changes the summation order, so the values agree to float rounding only
            assert fresh.logprobs(pairs, edited=edited) == pytest.approx(lps, rel=1e-5, abs=1e-6)


def test_the_audit_answers_a_weight_edit_as_the_chat_does(tiny_engine) -> None:
    """The question naming a weight edit's subject: the audit's "after" answer is the chat's (steered
    the same way), its "before" answer the chat's before the edit."""
    from kbchat.audit.live import AUDIT_MAX_TOKENS

    question = "Where is the Eiffel Tower?"
    with one_thread():
        before = tiny_engine.ask(question, max_new_tokens=AUDIT_MAX_TOKENS).text
        record = tiny_engine.edit(EIFFEL, method="rome", audit="off")
        view = tiny_engine.audit_view(record.id)
        assert [w.id for w in view.weight_edits] == [record.id] and view.unedited([record.id])
        assert view.generate(question, edited=True) == tiny_engine.ask(question, max_new_tokens=AUDIT_MAX_TOKENS).text
        assert view.generate(question, edited=False) == before


def test_edit_view_scores_change_with_the_edit(tiny_engine) -> None:
    record = tiny_engine.edit(EIFFEL, method="rome", audit="off")
    view = tiny_engine.audit_view(record.id)
    pair = [("The Eiffel Tower is located in", "Rome")]
    with one_thread():
        assert view.logprobs(pair, edited=True)[0] > view.logprobs(pair, edited=False)[0] + 0.1


def test_the_answer_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    cache = AnswerCache(size=2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"  # "b" is now the least recently used
    cache.put("c", "3")
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") == "1" and cache.get("c") == "3"
    assert (cache.hits, cache.misses) == (3, 1)
    with pytest.raises(ValueError):
        AnswerCache(size=0)
