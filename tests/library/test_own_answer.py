"""The own-answer term of the value optimisation (methods.own_answer): which positions it keeps, where
the delta goes, and that it pulls the edited answer's distributions back towards the unedited ones."""

from __future__ import annotations

import pytest
import torch

import methods
from methods.own_answer import OwnAnswer, answer_kl, answer_rows, fact_chars, kept_logprobs
from methods.requests import EditRequest
from tests.tiny_models import tiny

QUESTION = "<|user|>Where is the Eiffel Tower?<|end|><|assistant|>"
ANSWER = "The Eiffel Tower is located in Paris. People say that Paris is near the river."


def test_fact_chars_finds_every_occurrence_case_blind() -> None:
    assert fact_chars("Paris, then paris.", "Paris") == [(0, 5), (12, 17)]
    assert fact_chars("Rome", None) == [] and fact_chars("Rome", " ") == []


def test_kept_positions_skip_the_fact_and_the_delta_goes_on_the_question_only() -> None:
    _model, tok = tiny("llama")
    own = OwnAnswer(QUESTION, ANSWER, "Paris")
    rows = answer_rows(tok, [own, OwnAnswer(QUESTION, ANSWER)], "Eiffel Tower", "cpu")
    ids = rows.input_ids[0].tolist()
    n_question = len(tok(QUESTION, add_special_tokens=False)["input_ids"])
    predicted = [tok.decode([ids[p + 1]]) for p in rows.kept[0]]
    assert "Paris" not in "".join(predicted) and "river" in "".join(predicted)
    assert len(rows.kept[1]) > len(rows.kept[0])  # no fact given: every answer position is kept
    assert all(p >= n_question - 1 for p in rows.kept[0])  # the question's own positions are not kept
    assert rows.subject_positions[0] and all(p < n_question for p in rows.subject_positions[0])
    with pytest.raises(ValueError, match="not found"):
        answer_rows(tok, [OwnAnswer("<|user|>Hello<|end|><|assistant|>", ANSWER)], "Eiffel Tower", "cpu")


def _answer_kl(model, tok, delta, rows) -> float:
    """KL(unedited || with delta) over the kept positions, the delta acting as a weight edit."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        base = kept_logprobs(head, model.base_model(input_ids=rows.input_ids).last_hidden_state, rows.kept)
        with delta.patched(model):
            after = kept_logprobs(head, model.base_model(input_ids=rows.input_ids).last_hidden_state, rows.kept)
    return float(answer_kl(after, base))


def test_rome_with_own_answers_keeps_them_closer_and_still_writes_the_fact() -> None:
    model, tok = tiny("llama")
    request = EditRequest("Eiffel Tower", "The {} is located in", "Rome", "Paris")
    own = OwnAnswer(QUESTION, "The Eiffel Tower is located in Paris. The weather was mild and the streets were quiet.",
                    "Paris")
    rome = methods.get("rome")
    # as tests/library/test_families.py edits tiny models: raw prompts, a value free to grow
    hp = rome.hparams_from_dict(model, {"layer": 1, "value": {"steps": 8, "clamp_norm_factor": 10.0,
                                                              "chat_prompts": False},
                                        "stats": {"n_tokens": 1024, "seq_len": 16, "batch_size": 4}})
    plain = rome.compute(model, tok, [request], hp)
    kept = rome.compute(model, tok, [request], hp, answers=[[own]])
    assert kept.meta["final_nll"][0] < plain.meta["final_nll"][0] + 1.0  # the fact is written about as well
    rows = answer_rows(tok, [own], request.subject, "cpu")
    closer, farther = _answer_kl(model, tok, kept, rows), _answer_kl(model, tok, plain, rows)
    assert closer < 0.8 * farther
