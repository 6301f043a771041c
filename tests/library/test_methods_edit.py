"""ROME, MEMIT, AlphaEdit and FT-L on tiny random Llama and GPT-2: computing a delta leaves the model
alone, applying it makes the target likely; plus hyperparameters, the registry, EditRequest and kv.

Random models route little between positions, so the edit prompts end with the subject (see
tests/tiny_models.py); a target's log-prob can still move by several nats there.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn
from transformers import BertConfig

import methods
from methods.alphaedit import null_space_projector
from methods.architecture import UnsupportedModel, architecture_of
from methods.delta import weight_of
from methods.hparams import (
    ROME_CONTEXTS,
    AlphaEditHParams,
    FTHParams,
    MemitHParams,
    RomeHParams,
    StatsHParams,
    ValueHParams,
    defaults,
    from_dict,
)
from methods.kv import _hidden, edit_texts, subject_last_tokens, target_token_ids, value_groups
from methods.requests import EditRequest
from methods.stats import StatsCache, model_fingerprint
from tests.library.conftest import target_logprob, target_logprobs
from tests.tiny_models import FAMILIES, STATS, corpus, edit_requests, tiny


@pytest.fixture(scope="module")
def stats() -> StatsCache:
    """Shared by the module: statistics are keyed by model fingerprint, and every tiny(family) is identical."""
    return StatsCache(corpus=corpus)


# Few steps and tiny-model scales: MEMIT's default lambda (15,000, for 1,000s of key dimensions) would
# all but freeze a 128-wide MLP, and AlphaEdit's null space at 1e-2 leaves little room on it.
TEST_HPARAMS = {
    "rome": {"layer": 1, "value": {"steps": 10}, "stats": STATS},
    "memit": {"layers": [1, 2], "mom2_weight": 100.0, "value": {"steps": 10}, "stats": STATS},
    "alphaedit": {"layers": [1, 2], "nullspace_threshold": 0.05, "l2": 1.0, "value": {"steps": 10}, "stats": STATS},
    "ft": {"layer": 1, "steps": 10, "lr": 1e-2, "norm_constraint": 2e-2},
}


def _compute(name: str, model, tok, requests, stats: StatsCache, **options) -> methods.Delta:
    method = methods.get(name)
    return method.compute(model, tok, requests, method.hparams(model, **TEST_HPARAMS[name]), stats=stats, **options)


def _mixed_requires_grad(model) -> list[bool]:
    """Freeze some parameters so that "flags restored" means restored, not "all set to True"."""
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    return [p.requires_grad for p in model.parameters()]


# ---------------------------------------------------------------------------------------------
# The four methods


@pytest.mark.parametrize("name", ["rome", "memit", "alphaedit", "ft"])
def test_compute_leaves_the_model_and_apply_writes_the_edit(family, name, stats):
    model, tok = tiny(family)
    flags = _mixed_requires_grad(model)
    fingerprint = model_fingerprint(model)
    (request,) = edit_requests(1)
    new_before = target_logprob(model, tok, request.text, request.target)

    delta = _compute(name, model, tok, [request], stats)

    assert model_fingerprint(model) == fingerprint
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    assert delta.method == name
    assert delta.meta["requests"] == [dataclasses.asdict(request)]
    arch = architecture_of(model)
    layers = TEST_HPARAMS[name].get("layers", [TEST_HPARAMS[name].get("layer")])
    assert delta.modules == tuple(arch.mlp_out_name(i) for i in layers)

    applied = delta.apply(model)
    new_after = target_logprob(model, tok, request.text, request.target)
    old_after = target_logprob(model, tok, request.text, request.target_true)
    applied.undo()
    assert model_fingerprint(model) == fingerprint
    assert new_after > new_before + 2.0, (new_before, new_after)
    assert new_after > old_after  # the new target now beats the old one

    with delta.patched(model):  # the hooked form edits the same way
        assert target_logprob(model, tok, request.text, request.target) == pytest.approx(new_after, abs=1e-3)


def test_rome_edit_also_moves_chat_answers(stats):
    """The Llama tokenizer has a chat template: ROME optimises on chat-formatted prompts too."""
    model, tok = tiny("llama")
    (request,) = edit_requests(1)
    head = tok.apply_chat_template(
        [{"role": "user", "content": f"Tell me about {request.subject}."}], add_generation_prompt=True, tokenize=False
    )
    before = target_logprob(model, tok, head + request.text, request.target)
    applied = _compute("rome", model, tok, [request], stats).apply(model)
    after = target_logprob(model, tok, head + request.text, request.target)
    applied.undo()
    assert after > before + 2.0, (before, after)


def test_rome_edits_several_requests_one_after_another(family, stats):
    model, tok = tiny(family)
    requests = edit_requests(2)
    pairs = [(r.text, r.target) for r in requests]
    before = target_logprobs(model, tok, pairs)
    delta = _compute("rome", model, tok, requests, stats)
    assert [u.rank for u in delta.updates] == [1, 1]
    assert delta.modules == (architecture_of(model).mlp_out_name(1),)
    applied = delta.apply(model)
    after = target_logprobs(model, tok, pairs)
    applied.undo()
    assert all(a > b + 2.0 for a, b in zip(after, before, strict=True)), (before, after)


def test_memit_batch_of_ten(family, stats):
    model, tok = tiny(family)
    requests = edit_requests(10)
    assert len({r.subject for r in requests}) == 10
    pairs = [(r.text, r.target) for r in requests]
    before = target_logprobs(model, tok, pairs)
    fingerprint = model_fingerprint(model)
    delta = _compute("memit", model, tok, requests, stats)
    assert model_fingerprint(model) == fingerprint
    assert len(delta.updates) == 2
    for update in delta.updates:
        assert update.rank == 10
        assert update.left.shape[1] == update.right.shape[1] == 10
        assert torch.linalg.matrix_rank(update.matrix()) == 10
    applied = delta.apply(model)
    after = target_logprobs(model, tok, pairs)
    applied.undo()
    gains = [a - b for a, b in zip(after, before, strict=True)]
    assert min(gains) > 1.0, gains


def test_alphaedit_keeps_its_keys_for_later_edits(family, stats):
    model, tok = tiny(family)
    delta = _compute("alphaedit", model, tok, edit_requests(2), stats)
    for update in delta.updates:
        keys = delta.extras[f"keys.{update.module}"]
        assert keys.shape == (2, update.right.shape[0])  # (n, in)
    back = methods.Delta.from_bytes(delta.to_bytes())
    assert back.extras.keys() == delta.extras.keys()


def _second_edit(model, tok, stats, first: methods.Delta, second: EditRequest, prior: bool):
    applied = first.apply(model)
    try:
        delta = _compute("alphaedit", model, tok, [second], stats, prior=[first] if prior else [])
    finally:
        applied.undo()
    return delta


def test_alphaedit_prior_protects_the_earlier_keys(family, stats):
    """The contract: with `prior`, the second update barely moves the first edit's keys (||dW2 K1||)."""
    model, tok = tiny(family)
    first_request, second_request = edit_requests(2)
    first = _compute("alphaedit", model, tok, [first_request], stats)
    moved = {}
    for prior in (False, True):
        second = _second_edit(model, tok, stats, first, second_request, prior)
        moved[prior] = sum(
            float((u.matrix() @ first.extras[f"keys.{u.module}"].T).norm()) for u in second.updates
        )
    assert moved[True] < 0.5 * moved[False], moved


def test_alphaedit_prior_keeps_the_earlier_edit(stats):
    """The earlier target stays likelier when the second edit is computed with prior=[first].

    GPT-2 only: on the tiny Llama the first target's log-prob comes out the same or slightly lower
    with prior (its subject keys vary with the context, chat prompts included, so the protected mean
    keys are not the evaluation prompt's key).
    """
    model, tok = tiny("gpt2")
    first_request, second_request = edit_requests(2)
    first = _compute("alphaedit", model, tok, [first_request], stats)
    kept = {}
    for prior in (False, True):
        second = _second_edit(model, tok, stats, first, second_request, prior)
        a1, a2 = first.apply(model), second.apply(model)
        kept[prior] = target_logprob(model, tok, first_request.text, first_request.target)
        assert target_logprob(model, tok, second_request.text, second_request.target) > -3.0
        a2.undo()
        a1.undo()
    assert kept[True] > kept[False] + 0.5, kept


def test_alphaedit_preserve_moves_ordinary_keys_less(family, stats):
    """`preserve` weighs the update's effect on real text's keys: per unit of change at the edit's own
    key, the mean change over ordinary keys, tr(dW C dW^T), is smaller than with the paper's update."""
    model, tok = tiny(family)
    (request,) = edit_requests(1)
    method = methods.get("alphaedit")
    leak = {}
    for preserve in (0.0, 100.0):
        hp = method.hparams(model, **{**TEST_HPARAMS["alphaedit"], "preserve": preserve})
        delta = method.compute(model, tok, [request], hp, stats=stats)
        covs = stats.second_moments(model, tok, [u.module for u in delta.updates], hp.stats)
        ratios = []
        for u in delta.updates:
            dw, k = u.matrix(), delta.extras[f"keys.{u.module}"]  # (out, in), (1, in)
            ratios.append(float(torch.trace(dw @ covs[u.module] @ dw.T) / (dw @ k.T).square().sum()))
        leak[preserve] = sum(ratios) / len(ratios)
    assert leak[100.0] < 0.7 * leak[0.0], leak


def test_alphaedit_bank_holds_other_subjects_outputs(family, stats):
    """With `bank`, keys of frequent names in the statistics corpus join the preserved keys: the update
    moves what the MLP writes for those other subjects less, per unit of change at the edit's own key;
    the edit's own subject is never in its bank."""
    from methods.bank import entity_names, name_keys

    model, tok = tiny(family)
    (request,) = edit_requests(1)
    names = entity_names(corpus(), 12)
    assert request.subject in names and "Michael Jordan" in names
    others = [n for n in names if n != request.subject]
    method = methods.get("alphaedit")
    moved = {}
    for bank in (0, 12):
        hp = method.hparams(model, **{**TEST_HPARAMS["alphaedit"], "bank": bank})
        delta = method.compute(model, tok, [request], hp, stats=stats)
        ratios = []
        for u in delta.updates:
            dw, k = u.matrix(), delta.extras[f"keys.{u.module}"]  # (out, in), (1, in)
            b = name_keys(model, tok, u.module, others)  # (n, in)
            ratios.append(float((dw @ b.T).square().mean() / (dw @ k.T).square().sum()))
        moved[bank] = sum(ratios) / len(ratios)
    assert moved[12] < 0.5 * moved[0], moved


def test_null_space_by_energy_keeps_the_trace_fraction():
    """The energy criterion takes the smallest eigen-directions holding at most that fraction of the
    trace, however large the top eigenvalue; the threshold follows the top eigenvalue."""
    basis, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    values = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.9, 100.0], dtype=torch.float64)
    cov = basis @ torch.diag(values) @ basis.T
    by_energy = null_space_projector(cov, 1e-2, energy=0.08 / values.sum().item())  # 0.06 <= 0.08 < 0.1
    assert torch.allclose(by_energy, basis[:, :3] @ basis[:, :3].T, atol=1e-8)
    assert torch.linalg.matrix_rank(null_space_projector(cov, 1e-2)) == 5  # all but the outlier
    assert float((by_energy @ by_energy - by_energy).abs().max()) < 1e-8  # a projector


def test_ft_update_is_dense_and_bounded(family, stats):
    model, tok = tiny(family)
    delta = _compute("ft", model, tok, edit_requests(1), stats)
    (update,) = delta.updates
    assert update.right is None
    assert update.left.shape == weight_of(model.get_submodule(update.module)).shape  # (out, in)
    assert float(update.left.abs().max()) <= TEST_HPARAMS["ft"]["norm_constraint"] + 1e-7


# ---------------------------------------------------------------------------------------------
# Hyperparameters and the registry


def test_templates_per_family():
    llama, _ = tiny("llama")
    gpt2, _ = tiny("gpt2")
    assert architecture_of(llama).mlp_out == "model.layers.{}.mlp.down_proj"
    assert architecture_of(gpt2).mlp_out == "transformer.h.{}.mlp.c_proj"
    assert architecture_of(llama).layer_name(2) == "model.layers.2"
    assert architecture_of(gpt2).layer_name(2) == "transformer.h.2"
    assert not architecture_of(llama).transposed_weight and architecture_of(gpt2).transposed_weight


def test_defaults_per_family_and_depth(family):
    model, _ = tiny(family)
    for name in methods.names():
        hp = methods.get(name).hparams(model)
        assert isinstance(hp, methods.get(name).hparams_class)
    assert methods.get("rome").hparams(model).layer == 1
    assert methods.get("memit").hparams(model).layers == (0, 1)
    assert methods.get("rome").hparams(model).value == ValueHParams(contexts=ROME_CONTEXTS)
    assert methods.get("memit").hparams(model).value == ValueHParams()

    # At full size: ROME's layers from the papers (5 of Llama-2-7B's 32, 17 of GPT-2 XL's 48).
    depth_key, depth = ("num_hidden_layers", 32) if family == "llama" else ("n_layer", 48)
    deep = nn.Module()  # defaults read only the config
    deep.config = type(model.config)(**{depth_key: depth})
    rome_layer = defaults(RomeHParams, deep).layer
    assert rome_layer == (5 if family == "llama" else 17)
    memit_layers = defaults(MemitHParams, deep).layers
    assert memit_layers == tuple(range(memit_layers[0], memit_layers[-1] + 1))  # contiguous
    assert rome_layer in memit_layers and memit_layers[-1] < depth // 2
    assert defaults(AlphaEditHParams, deep).layers == memit_layers


def test_overrides_nested_and_unknown(family):
    model, _ = tiny(family)
    rome = methods.get("rome")
    hp = rome.hparams(model, layer=2, value={"steps": 3, "lr": 0.1}, stats={"n_tokens": 64})
    assert hp.layer == 2
    assert hp.value == ValueHParams(steps=3, lr=0.1, contexts=ROME_CONTEXTS)  # the others keep their defaults
    assert hp.stats == StatsHParams(n_tokens=64)
    assert methods.get("memit").hparams(model, layers=[1, 2]).layers == (1, 2)
    with pytest.raises(TypeError, match="nope"):
        rome.hparams(model, nope=1)
    with pytest.raises(TypeError, match="stepz"):
        rome.hparams(model, value={"stepz": 3})
    with pytest.raises(TypeError):
        methods.get("ft").hparams(model, value={"steps": 3})  # FT has no value optimisation
    assert methods.get("ft").hparams_from_dict(model, {"steps": 4}) == FTHParams(layer=1, steps=4)


@pytest.mark.parametrize("cls", [RomeHParams, MemitHParams, AlphaEditHParams, FTHParams])
def test_hparams_json_round_trip(cls):
    model, _ = tiny("gpt2")
    hp = methods.get({RomeHParams: "rome", MemitHParams: "memit", AlphaEditHParams: "alphaedit",
                      FTHParams: "ft"}[cls]).hparams(model)
    values = json.loads(json.dumps(dataclasses.asdict(hp)))
    assert from_dict(cls, values) == hp  # no base: nested dicts still become dataclasses
    assert from_dict(cls, values, base=hp) == hp


def test_registry():
    assert methods.names() == ["rome", "memit", "alphaedit", "ft", "mend", "instructedit", "kn"]
    assert methods.get("alphaedit").protects_prior and not methods.get("memit").protects_prior
    assert not methods.get("ft").uses_statistics
    with pytest.raises(KeyError, match="nope"):
        methods.get("nope")


def test_unsupported_architecture_is_refused(stats):
    model = nn.Linear(2, 2)
    model.config = BertConfig(num_hidden_layers=2)
    with pytest.raises(UnsupportedModel, match="bert"):
        methods.get("rome").hparams(model)
    _, tok = tiny("gpt2")
    for name in methods.names():
        with pytest.raises(UnsupportedModel):
            methods.get(name).compute(model, tok, edit_requests(1), stats=stats)


# ---------------------------------------------------------------------------------------------
# EditRequest and the key/value helpers


def test_edit_request_template_or_verbatim_subject():
    slot = EditRequest("Eiffel Tower", "The {} is located in", "Rome")
    verbatim = EditRequest("Eiffel Tower", "The Eiffel Tower is located in", "Rome")
    assert slot.text == verbatim.text == "The Eiffel Tower is located in"
    assert slot.template == verbatim.template == "The {} is located in"
    _, tok = tiny("llama")
    assert edit_texts(tok, slot) == edit_texts(tok, verbatim)


@pytest.mark.parametrize(
    "subject, prompt, target",
    [("", "The {} is in", "Rome"), ("  ", "The {} is in", "Rome"), ("Eiffel Tower", "The {} is in", ""),
     ("Eiffel Tower", "The {} is in", " "), ("Eiffel Tower", "The Louvre is in", "Rome")],
)
def test_edit_request_rejects(subject, prompt, target):
    with pytest.raises(ValueError):
        EditRequest(subject, prompt, target)


def test_edit_texts_chat_only_with_a_template():
    request = edit_requests(1)[0]
    _, llama_tok = tiny("llama")
    _, gpt2_tok = tiny("gpt2")
    assert len(edit_texts(llama_tok, request).chat) == 2
    assert all(t.endswith(request.text) for t in edit_texts(llama_tok, request).texts)
    assert edit_texts(gpt2_tok, request).chat == ()
    assert edit_texts(llama_tok, request, chat=False).chat == ()


@pytest.mark.parametrize("family_tok", FAMILIES)
def test_subject_last_tokens_finds_every_occurrence(family_tok):
    _, tok = tiny(family_tok)
    text = "Big Ben is tall. Tell me about Big Ben. Everyone has heard of the Big Ben"
    positions = subject_last_tokens(tok, text, "Big Ben")
    assert len(positions) == 3
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert all(pieces[i].lstrip("Ġ") == "Ben" for i in positions)
    assert positions[-1] == len(pieces) - 1
    with pytest.raises(ValueError, match="not found"):
        subject_last_tokens(tok, text, "Eiffel Tower")


def test_subject_last_tokens_in_a_chat_text():
    _, tok = tiny("llama")
    request = edit_requests(1)[0]
    (text,) = edit_texts(tok, request).chat[:1]
    positions = subject_last_tokens(tok, text, request.subject)
    assert len(positions) == 2  # in the question and in the answer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert all(tok.decode(ids[: i + 1]).endswith(request.subject) for i in positions)


@pytest.mark.parametrize("family_tok", FAMILIES)
@pytest.mark.parametrize("target", ["Rome", "Zanzibar", "San Francisco", "Ouagadougou Kathmandu"])
def test_target_token_ids_are_the_tail_of_the_joint_tokenisation(family_tok, target):
    _, tok = tiny(family_tok)
    for text in ["Everyone has heard of the Eiffel Tower", "The Golden Gate Bridge is located in"]:
        head = tok(text, add_special_tokens=False)["input_ids"]
        full = tok(text + " " + target, add_special_tokens=False)["input_ids"]
        tail = target_token_ids(tok, text, target)
        assert head + tail == full
        assert tok.decode(tail).strip() == target
    assert len(target_token_ids(tok, "The Eiffel Tower is in", "Zanzibar")) > 1


def test_shared_chat_prefix_cache_gives_the_same_hidden_states():
    """The chat texts' common system-prompt prefix is run once and cached; the suffix must see it."""
    model, tok = tiny("llama")
    request = edit_requests(1)[0]
    groups = value_groups(model, tok, request, chat=True)
    assert len(groups) == 2
    chat = groups[1]
    assert chat.prefix_cache is not None and chat.prefix_len >= 8
    with torch.no_grad():
        cached = _hidden(model, chat)  # (B, T - p, d)
        full_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in edit_texts(tok, request).chat]
        for row, ids in enumerate(full_ids):
            target_ids = target_token_ids(tok, edit_texts(tok, request).chat[row], request.target)
            ids = ids + target_ids[:-1]
            full = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, d)
            n = len(ids) - chat.prefix_len
            torch.testing.assert_close(cached[row, :n], full[chat.prefix_len :], atol=1e-4, rtol=1e-4)
