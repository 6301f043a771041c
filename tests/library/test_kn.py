"""KN (knowledge neurons) on tiny random Llama and GPT-2: the attribution is an integral, computing
leaves the model alone, the delta moves only the selected neurons' value vectors and raises the target
more often than not."""

from __future__ import annotations

import pytest
import torch

import methods
from methods.architecture import architecture_of
from methods.delta import weight_of
from methods.hooks import Trace
from methods.kn import layer_attribution
from methods.mend.batch import encode
from methods.stats import model_fingerprint
from tests.library.conftest import target_logprob
from tests.tiny_models import edit_requests, tiny


def test_kn_raises_the_target_more_often_than_not_and_leaves_the_model(family):
    model, tok = tiny(family)
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)
    flags = [p.requires_grad for p in model.parameters()]
    fingerprint = model_fingerprint(model)
    kn = methods.get("kn")
    raised = 0
    requests = edit_requests(6)
    for request in requests:
        before = target_logprob(model, tok, request.text, request.target)
        delta = kn.compute(model, tok, [request], kn.hparams(model))
        assert model_fingerprint(model) == fingerprint
        assert [p.requires_grad for p in model.parameters()] == flags
        (neurons,) = delta.meta["neurons"]
        assert 0 < len(neurons) == sum(u.rank for u in delta.updates) <= kn.hparams(model).max_neurons
        applied = delta.apply(model)
        raised += target_logprob(model, tok, request.text, request.target) > before
        applied.undo()
        assert model_fingerprint(model) == fingerprint
    assert raised > len(requests) / 2, raised


def test_kn_moves_only_the_selected_value_vectors(family):
    model, tok = tiny(family)
    delta = methods.get("kn").compute(model, tok, edit_requests(1))
    for update in delta.updates:
        w = weight_of(model.get_submodule(update.module))  # (out, in): value vectors are columns
        change = update.matrix()
        assert change.shape == w.shape
        touched = torch.nonzero(change.abs().sum(0)).flatten().tolist()
        assert sorted(touched) == sorted(int(i) for i in torch.nonzero(update.right.sum(1)).flatten())
        assert torch.all(update.right.sum(0) == 1)  # one-hot columns
    layers = {m for m, _n, _s in delta.meta["neurons"][0]}
    assert set(delta.modules) == layers
    assert all(m in [architecture_of(model).mlp_out_name(i) for i in range(4)] for m in layers)


def test_attribution_is_an_integral(family):
    """Completeness: the scores of a layer add up to P(answer) - P(answer with that layer's activation at 0)."""
    model, tok = tiny(family)
    request = edit_requests(1)[0]
    batch = encode(tok, [(request.text, request.target_true)])
    module = architecture_of(model).mlp_out_name(2)
    pos = list(batch.positions[0])
    bias = getattr(model.get_submodule(module), "bias", None)

    def prob(zero: bool) -> float:
        def edit(out, _name):
            out = out.clone()
            out[:, pos] = 0.0 if bias is None else bias
            return out

        with torch.no_grad(), Trace(model, [module], edit_output=edit if zero else None, retain_output=False):
            probs = model(input_ids=batch.input_ids).logits[0, pos].softmax(-1)  # (n, V)
        return float(probs[range(len(pos)), list(batch.target_ids[0])].sum())

    scores, _ = layer_attribution(model, batch, module, steps=200)
    assert float(scores.sum()) == pytest.approx(prob(False) - prob(True), rel=0.05, abs=1e-4)
    one_step, _ = layer_attribution(model, batch, module, steps=1)
    assert not torch.allclose(one_step, scores, rtol=0.05)  # one step is a gradient at a, not the integral
