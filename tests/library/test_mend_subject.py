"""An editor trained `at_subject` (experimental): its pairs are taken at the subject's last token in the
locate-then-edit layers' output matrices, and its update is whitened as ROME's key, in training and at
edit time alike."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import methods
from methods.kv import target_token_ids
from methods.mend import Editor, load_editor, save_editor, train
from methods.mend.batch import encode, subject_sites
from methods.mend.compute import capture
from methods.mend.reach import whitened, whitening
from methods.mend.training import edit_losses, new_spec, training_whitening
from methods.stats import model_fingerprint
from tests.library.conftest import target_logprob
from tests.library.test_mend import CONFIG, FACTS, HPARAMS, records
from tests.tiny_models import STATS, corpus, edit_requests, tiny


def subject_hparams(model, **changes):
    values = {"at_subject": True, "stats": STATS, "rank": HPARAMS["rank"], "subject_alpha_init": HPARAMS["alpha_init"]}
    return methods.get("mend").hparams(model, **{**values, **changes})


def subject_editor(model, alpha: float = 0.1) -> Editor:
    return Editor(new_spec(model, subject_hparams(model, subject_alpha_init=alpha), "mend", model_fingerprint(model), ()))


def test_the_spec_edits_the_output_matrices_where_the_subject_is_read(family, tmp_path):
    model, _tok = tiny(family)
    hp = subject_hparams(model)
    assert hp.subject_layers == methods.get("memit").hparams(model).layers  # MEMIT's span by default
    editor = subject_editor(model)
    arch = methods.architecture.architecture_of(model)
    assert editor.spec.names == tuple(arch.mlp_out_name(layer) for layer in hp.subject_layers)
    assert editor.spec.at_subject and editor.spec.whiten == hp.subject_ridge and editor.spec.alpha_init == 0.1
    save_editor(editor, tmp_path / "e.safetensors")
    assert load_editor(tmp_path / "e.safetensors", model_fingerprint(model)).spec == editor.spec
    plain = Editor(new_spec(model, methods.get("mend").hparams(model), "mend", model_fingerprint(model), ()))
    assert not plain.spec.at_subject and plain.spec.whiten is None


def test_sites_are_the_subjects_last_tokens_or_the_last_token():
    _model, tok = tiny("llama")
    text = "Everyone has heard of the Eiffel Tower, and the Eiffel Tower is tall"
    ids = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    (first, second), (missing,) = subject_sites(tok, [text, "Nothing here"], ["Eiffel Tower", "Big Ben"])
    assert text[: ids["offset_mapping"][first][1]].endswith("Eiffel Tower")
    assert text[: ids["offset_mapping"][second][1]].endswith("the Eiffel Tower")
    assert missing == len(tok("Nothing here", add_special_tokens=False)["input_ids"]) - 1


def test_compute_acts_at_the_subject_whitened_and_leaves_the_model(family):
    model, tok = tiny(family)
    fingerprint = model_fingerprint(model)
    stats = methods.StatsCache(corpus=corpus)
    (request,) = edit_requests(1)
    editor = subject_editor(model, alpha=1.0)
    hp = subject_hparams(model, subject_steps=())  # the update as the editor gives it (no step search)
    before = target_logprob(model, tok, request.text, request.target)
    delta = methods.get("mend").compute(model, tok, [request], hp, editor=editor, stats=stats)
    assert model_fingerprint(model) == fingerprint
    assert delta.meta["at_subject"] and delta.meta["whiten"] == hp.subject_ridge
    assert [u.module for u in delta.updates] == list(editor.spec.names)
    assert all(u.left.shape[1] == 1 for u in delta.updates)  # one rank-one term: the subject's one occurrence
    # The input side is the captured key, whitened; not the target positions' keys.
    batch = encode(tok, [(request.text, request.target)])
    sites = subject_sites(tok, [request.text], [request.subject])
    signals = capture(model, batch, editor.spec.names, sites)
    inverses = whitening(model, tok, editor.spec.names, hp.subject_ridge, STATS, stats, fingerprint)
    with torch.no_grad():
        expected = whitened({n: editor.factors(n, signals.x[n], signals.delta[n], signals.mask)
                             for n in editor.spec.names}, inverses)
    for update in delta.updates:
        assert torch.allclose(update.right[:, 0], expected[update.module][1][0, :, 0], rtol=1e-4, atol=1e-6)
    with delta.patched(model):
        after = target_logprob(model, tok, request.text, request.target)
    assert after > before + 0.5, (before, after)
    n_target = len(target_token_ids(tok, request.text, request.target))
    assert n_target >= 1 and model_fingerprint(model) == fingerprint


def test_an_editor_at_the_subject_searches_its_steps_unless_told_otherwise(family):
    """`steps` empty: an editor at the subject sizes each update from `subject_steps` (the chosen step is
    one of them, the last when none carries the edit); `steps` given wins; a last-layers editor is not
    searched (step 1)."""
    model, tok = tiny(family)
    stats = methods.StatsCache(corpus=corpus)
    requests = edit_requests(2)
    mend = methods.get("mend")
    editor = subject_editor(model, alpha=1.0)
    searched = mend.compute(model, tok, requests, subject_hparams(model, subject_steps=(0.5, 7.0)),
                            editor=editor, stats=stats)
    assert len(searched.meta["steps"]) == 2 and set(searched.meta["steps"]) <= {0.5, 7.0}
    given = mend.compute(model, tok, requests, subject_hparams(model, steps=(3.0,)), editor=editor, stats=stats)
    assert given.meta["steps"] == [3.0, 3.0]
    assert mend.hparams(model).subject_steps  # on by default for such editors
    plain_hp = mend.hparams(model, rank=HPARAMS["rank"])
    plain = Editor(new_spec(model, plain_hp, "mend", model_fingerprint(model), ()))
    assert mend.compute(model, tok, requests, plain_hp, editor=plain).meta["steps"] == [1.0, 1.0]


def test_training_at_the_subject_lowers_the_validation_edit_loss(tmp_path):
    model, tok = tiny("llama")
    config = dataclasses.replace(CONFIG, hparams=subject_hparams(model))
    stats = methods.StatsCache(corpus=corpus)
    result = train(model, tok, records(FACTS[:7]), records(FACTS[7:])[::3], config,
                   out=tmp_path / "mend.safetensors", stats=stats)
    before, best = result.history[0], result.best_val
    assert best["edit"] < before["edit"] - 0.3, result.history
    editor = load_editor(result.out, model_fingerprint(model))
    assert editor.spec.at_subject
    record = records(FACTS[:1])[0]
    with pytest.raises(ValueError, match="whitening"):
        edit_losses(model, tok, editor, [record], [record.prompt], False, False)
    inverses = training_whitening(model, tok, editor, stats, config.hparams)
    assert set(inverses) == set(editor.spec.names)
