"""MEND and InstructEdit on tiny random Llama and GPT-2: training lowers the held-out edit loss, a delta
raises the target and leaves the model alone until applied, the instruction matters, checkpoints
round-trip, resume exactly and refuse another model."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

import methods
from methods.delta import weight_of
from methods.hparams import MendHParams
from methods.kv import target_token_ids
from methods.mend import (
    DEFAULT_TASKS,
    Editor,
    EditorNotFound,
    EditRecord,
    LoadedEditors,
    TrainConfig,
    load_editor,
    save_editor,
    state_path,
    train,
)
from methods.mend.batch import encode
from methods.mend.checkpoint import load_state
from methods.mend.compute import capture
from methods.mend.instruct import wrap
from methods.mend.training import (
    TaskSampler,
    answer_kept,
    edit_losses,
    locality_weights,
    make_optimizer,
    new_spec,
)
from methods.requests import EditRequest
from methods.stats import model_fingerprint
from tests.library.conftest import target_logprob
from tests.tiny_models import EDIT_PROMPT, FACTS, edit_requests, tiny

CITIES = ("Rome", "Berlin", "Madrid", "Oslo", "Lisbon", "Vienna", "Athens", "Cairo", "Dublin", "Warsaw")
LOCALITY = (
    "The weather was mild and the streets were quiet.",
    "She wrote a letter to her brother and posted it",
    "The train left the station at noon and arrived in the",
    "A small cafe on the corner sells coffee, bread and",
)
# Tiny models: a small network, and steps large enough to move a random model within a few dozen steps.
HPARAMS = {"rank": 32, "alpha_init": 1e-2}
CONFIG = TrainConfig(steps=30, batch_size=4, lr=1e-3, alpha_lr=0.1, val_every=10, val_size=8)


def records(facts, task: str = DEFAULT_TASKS[0].name) -> list[EditRecord]:
    """Every (subject, new city) pair; prompts end with the subject (see tests/tiny_models.py)."""
    out = []
    for i, (subject, true, _new) in enumerate(facts):
        for j, city in enumerate(c for c in CITIES if c != true):
            out.append(EditRecord(EDIT_PROMPT.format(subject), subject, city, f"People often talk about the {subject}",
                                  LOCALITY[(i + j) % len(LOCALITY)], task))
    return out


def config(model, **changes) -> TrainConfig:
    return dataclasses.replace(CONFIG, hparams=methods.get("mend").hparams(model, **HPARAMS), **changes)


def fresh_editor(model, kind: str = "mend", alpha: float = 0.1) -> Editor:
    """An untrained editor: the identity, so its update is -alpha * the gradient."""
    hp = methods.get("mend").hparams(model, rank=32, alpha_init=alpha)
    tasks = DEFAULT_TASKS if kind == "instructedit" else ()
    return Editor(new_spec(model, hp, kind, model_fingerprint(model), tasks))


def test_training_lowers_the_validation_edit_loss(family, tmp_path):
    model, tok = tiny(family)
    fingerprint = model_fingerprint(model)
    seen = []
    result = train(model, tok, records(FACTS[:7]), records(FACTS[7:])[::3], config(model), seen.append,
                   out=tmp_path / "mend.safetensors")
    assert model_fingerprint(model) == fingerprint and not model.training
    assert [s.step for s in seen] == list(range(1, 31))
    assert [h["step"] for h in result.history] == [0, 10, 20, 30]
    before, best = result.history[0], result.best_val
    assert best["edit"] < before["edit"] - 0.5, result.history
    assert result.out.is_file() and state_path(result.out).is_file()
    assert load_editor(result.out, fingerprint).spec.kind == "mend"


def test_resume_carries_on_exactly(tmp_path):
    model, tok = tiny("gpt2")
    train_set, val_set = records(FACTS[:7]), records(FACTS[7:])[::6]
    straight, halves = tmp_path / "a" / "e.safetensors", tmp_path / "b" / "e.safetensors"
    train(model, tok, train_set, val_set, config(model, steps=12, val_every=6), out=straight)
    train(model, tok, train_set, val_set, config(model, steps=6, val_every=6), out=halves)
    result = train(model, tok, train_set, val_set, config(model, steps=12, val_every=6), out=halves, resume=True)
    assert [h["step"] for h in result.history] == [0, 6, 12]
    editors = []
    for path in (straight, halves):
        editor = Editor(load_editor(path).spec)
        optimizer = make_optimizer(editor, CONFIG)
        progress = load_state(state_path(path), editor, optimizer, torch.Generator())
        assert progress["step"] == 12
        editors.append(editor.state_dict())
    for key, value in editors[0].items():
        assert torch.equal(value, editors[1][key]), key
    with pytest.raises(ValueError, match="nothing to resume"):
        train(model, tok, train_set, val_set, config(model), out=tmp_path / "c.safetensors", resume=True)


def loc_mod(loc, vocab: int = 50):
    """The batch with its answer ids folded into a small vocabulary (for hand-made log-probs)."""
    return dataclasses.replace(loc, target_ids=tuple(tuple(i % vocab for i in ids) for ids in loc.target_ids))


def test_the_locality_term_is_taken_on_the_answer_when_there_is_one(family):
    """A neighbour's KL counts only where its answer is predicted; a step that moves that answer shows in
    `kept`, an untouched one does not."""
    model, tok = tiny(family)
    neighbour, answer = "The train left the station at noon and arrived in the", "Oslo Lisbon"
    loc = encode(tok, [(neighbour, answer), (LOCALITY[0], None)])
    weights = locality_weights(loc)
    n_answer = len(target_token_ids(tok, neighbour, answer))
    assert weights[0].tolist() == [float(t in loc.positions[0]) for t in range(weights.shape[1])]
    assert weights[0].sum() == n_answer and torch.equal(weights[1], loc.attention_mask[1].float())
    subject, _true, city = FACTS[0]
    record = EditRecord(EDIT_PROMPT.format(subject), subject, city, EDIT_PROMPT.format(subject), neighbour,
                        locality_answer=answer)
    still = edit_losses(model, tok, fresh_editor(model, alpha=1e-9), [record], [record.prompt], False, False)
    assert float(still.loc) < 1e-6 and still.kept.tolist() == [1.0]
    moved = edit_losses(model, tok, fresh_editor(model, alpha=1e3), [record], [record.prompt], False, False)
    assert float(moved.loc) > 1e-3
    base = torch.log_softmax(torch.randn(2, weights.shape[1], 50), -1)  # (B, T, V)
    ids = torch.tensor(loc.target_ids[0])
    for shift, kept in ((-0.4, 1.0), (-1.5, 0.0), (1.2, 0.0)):
        after = base.clone()
        after[0, list(loc.positions[0]), ids % 50] += shift / n_answer  # log P(answer) moves by `shift`
        assert answer_kept(base, after, loc_mod(loc)).tolist()[0] == kept
    assert math.isnan(answer_kept(base, base, loc_mod(loc)).tolist()[1])  # no answer: nothing to judge


def test_compute_raises_the_target_and_leaves_the_model(family):
    model, tok = tiny(family)
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    flags = [p.requires_grad for p in model.parameters()]
    fingerprint = model_fingerprint(model)
    request = EditRequest("Eiffel Tower", EDIT_PROMPT, "Ouagadougou Kathmandu", "Paris")
    before = target_logprob(model, tok, request.text, request.target)
    delta = methods.get("mend").compute(model, tok, [request], editor=fresh_editor(model))
    assert model_fingerprint(model) == fingerprint
    assert [p.requires_grad for p in model.parameters()] == flags
    n_target = len(target_token_ids(tok, request.text, request.target))
    assert n_target > 1
    for update in delta.updates:
        out, inp = weight_of(model.get_submodule(update.module)).shape
        assert update.left.shape == (out, n_target) and update.right.shape == (inp, n_target)
    assert len(delta.updates) == 3 * (3 if family == "llama" else 2)  # last three layers' MLP matrices
    state = {k: v.clone() for k, v in model.state_dict().items()}
    applied = delta.apply(model)
    after = target_logprob(model, tok, request.text, request.target)
    applied.undo()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # bit-exact
    assert after > before + 1.0, (before, after)
    with delta.patched(model):
        assert target_logprob(model, tok, request.text, request.target) == pytest.approx(after, abs=1e-3)
    back = methods.Delta.from_bytes(delta.to_bytes())
    assert all(torch.equal(a.left, b.left) and torch.equal(a.right, b.right)
               for a, b in zip(delta.updates, back.updates, strict=True))


def test_the_first_update_is_a_scaled_gradient_step_downhill(family):
    """An untrained editor is the identity: each matrix's update points against the loss gradient
    (as trained: no whitening, no step search)."""
    model, tok = tiny(family)
    (request,) = edit_requests(1)
    as_trained = methods.get("mend").hparams(model, whiten=None, steps=())
    delta = methods.get("mend").compute(model, tok, [request], as_trained, editor=fresh_editor(model, alpha=1e-3))
    text = request.text + " " + request.target
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n = len(tok(request.text, add_special_tokens=False)["input_ids"])
    logits = model(input_ids=ids).logits[0, n - 1 : -1]  # (n_target, V)
    loss = torch.nn.functional.cross_entropy(logits, ids[0, n:])
    model.zero_grad()
    loss.backward()
    for update in delta.updates:
        module = model.get_submodule(update.module)
        g = module.weight.grad.T if type(module).__name__ == "Conv1D" else module.weight.grad  # (out, in)
        cosine = torch.nn.functional.cosine_similarity(update.matrix().flatten(), g.flatten(), dim=0)
        assert cosine < -0.5, (update.module, float(cosine))
    model.zero_grad()


def test_instruction_changes_the_delta(family):
    model, tok = tiny(family)
    request = edit_requests(1)[0]
    editor = fresh_editor(model, "instructedit")
    compute = methods.get("instructedit").compute
    deltas = [
        compute(model, tok, [request], editor=editor, task=DEFAULT_TASKS[0].name),
        compute(model, tok, [request], editor=editor, task=DEFAULT_TASKS[1].name),
        compute(model, tok, [request], editor=editor, task=DEFAULT_TASKS[0].name, wording=1),
        methods.get("mend").compute(model, tok, [request], editor=fresh_editor(model)),
    ]
    assert deltas[0].meta["instruction"].startswith("Task: counterfactual completion.")
    assert deltas[3].meta["instruction"] is None
    for i in range(len(deltas)):
        for j in range(i + 1, len(deltas)):
            a, b = deltas[i].updates[0], deltas[j].updates[0]
            assert not torch.allclose(a.matrix(), b.matrix()), (i, j)
    again = compute(model, tok, [request], editor=editor, task=DEFAULT_TASKS[0].name)
    assert torch.equal(again.updates[0].left, deltas[0].updates[0].left)  # deterministic


def test_instructedit_sampler_wraps_edit_inputs_with_training_wordings():
    mixed = records(FACTS[:3]) + records(FACTS[3:6], DEFAULT_TASKS[1].name)
    sampler = TaskSampler(mixed, DEFAULT_TASKS, instructions=True)
    picked, texts = sampler.sample(200, torch.Generator().manual_seed(0))
    assert {r.task for r in picked} == {DEFAULT_TASKS[0].name, DEFAULT_TASKS[1].name}
    for record, text in zip(picked, texts, strict=True):
        task = next(t for t in DEFAULT_TASKS if t.name == record.task)
        assert text.endswith("\n" + record.prompt) and text.startswith(f"Task: {task.name}. ")
        assert task.wordings[task.held_out_wording] not in text
        assert not record.locality.startswith("Task:")
    assert wrap(DEFAULT_TASKS[0], 0, "x") != wrap(DEFAULT_TASKS[0], 1, "x")
    plain = TaskSampler(mixed, DEFAULT_TASKS, instructions=False)
    assert all(not t.startswith("Task:") for t in plain.sample(20, torch.Generator())[1])


def test_checkpoint_round_trip_and_search(family, tmp_path):
    model, tok = tiny(family)
    request = edit_requests(1)[0]
    editor = fresh_editor(model)
    with torch.no_grad():  # make it a non-identity editor, with statistics, so the round trip means something
        for p in editor.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    signals = capture(model, encode(tok, [(request.text, request.target)]), editor.spec.names)
    for name in editor.spec.names:
        editor.observe(name, signals.x[name], signals.delta[name], signals.mask)
    save_editor(editor, tmp_path / "mend.safetensors", {"note": "test"})
    fingerprint = model_fingerprint(model)
    loaded = load_editor(tmp_path / "mend.safetensors", fingerprint)
    assert loaded.spec == editor.spec
    compute = methods.get("mend").compute
    direct = compute(model, tok, [request], editor=editor)
    for delta in (compute(model, tok, [request], editor=loaded), compute(model, tok, [request], editors=[tmp_path])):
        for a, b in zip(direct.updates, delta.updates, strict=True):
            assert torch.equal(a.left, b.left) and torch.equal(a.right, b.right)
    with pytest.raises(EditorNotFound, match="no InstructEdit editor for this model"):
        methods.get("instructedit").compute(model, tok, [request], editors=[tmp_path])


def test_loaded_editors_load_once_and_notice_a_rewritten_file(tmp_path):
    model, _tok = tiny("llama")
    path = tmp_path / "mend.safetensors"
    save_editor(fresh_editor(model), path)
    shelf = LoadedEditors()
    first = shelf.get(model, "mend", [tmp_path])
    assert shelf.get(model, "mend", [tmp_path]) is first  # kept, not loaded again
    retrained = fresh_editor(model, alpha=0.5)
    save_editor(retrained, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a later write, surely
    again = shelf.get(model, "mend", [tmp_path])
    assert again is not first and torch.equal(again.log_alpha, retrained.log_alpha)
    with pytest.raises(EditorNotFound, match="no InstructEdit editor"):
        shelf.get(model, "instructedit", [tmp_path])


def test_a_checkpoint_for_another_model_is_refused(family, tmp_path):
    model, tok = tiny(family)
    other, _ = tiny(family, seed=1)
    path = tmp_path / "mend.safetensors"
    save_editor(fresh_editor(model), path)
    mine, theirs = model_fingerprint(model), model_fingerprint(other)
    with pytest.raises(ValueError, match=f"{mine[:12]}.*{theirs[:12]}"):
        load_editor(path, theirs)
    with pytest.raises(EditorNotFound, match=rf"no MEND editor for this model \(fingerprint {theirs[:12]}.*--method mend"):
        methods.get("mend").compute(other, tok, edit_requests(1), editors=[tmp_path])
    with pytest.raises(EditorNotFound, match="no MEND editor"):
        methods.get("mend").compute(model, tok, edit_requests(1))  # only the shipped editors: another model


def test_registry_and_hparams(family):
    model, _ = tiny(family)
    for name in ("mend", "instructedit", "kn"):
        method = methods.get(name)
        assert method.uses_statistics == (name != "kn") and not method.protects_prior  # mend: whitening
    hp = methods.get("mend").hparams(model)
    assert hp == MendHParams(layers=(1, 2, 3), subject_layers=methods.get("memit").hparams(model).layers)
    assert hp.alpha_init == 1e-3 and not hp.at_subject
    assert methods.get("instructedit").hparams_from_dict(model, {"rank": 8}).rank == 8
    with pytest.raises(TypeError):
        methods.get("mend").hparams(model, nope=1)
