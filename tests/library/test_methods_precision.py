"""The mixed-precision value optimisation: steps on a bfloat16 working copy, the result checked and
finished in the model's own dtype; the copy carries the hooks patched in on the model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from methods.architecture import architecture_of
from methods.delta import Delta, Update, patched
from methods.hooks import Trace
from methods.hparams import ValueHParams
from methods.kv import _hidden, optimize_value, target_nll, value_groups
from methods.precision import cpu_has_native_bf16, work_dtype, working_copy
from tests.tiny_models import edit_requests, tiny


def test_work_dtype_settings():
    model, _ = tiny("llama")
    assert work_dtype(model, "model") == torch.float32
    assert work_dtype(model, "bfloat16") == torch.bfloat16
    assert work_dtype(model, "auto") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert work_dtype(model.to(torch.bfloat16), "auto") == torch.bfloat16  # already cheap: no copy
    for bad in ("int8", "nonsense", "Tensor"):
        with pytest.raises(ValueError, match="work_dtype"):
            work_dtype(model, bad)


def test_working_copy_leaves_the_model_alone():
    model, _ = tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert working_copy(model, torch.float32) is None
    copy = working_copy(model, torch.bfloat16)
    assert next(copy.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
        assert copy.state_dict()[k].data_ptr() != v.data_ptr()


def test_working_copy_carries_patched_updates_in_its_own_dtype(family):
    """An earlier update patched on the model acts in the bfloat16 copy too (no dtype clash)."""
    model, tok = tiny(family)
    module = architecture_of(model).mlp_out_name(1)
    w = model.get_submodule(module).weight
    n_out = w.shape[0] if family == "llama" else w.shape[1]
    n_in = w.shape[1] if family == "llama" else w.shape[0]
    torch.manual_seed(0)
    delta = Delta("test", (Update(module, torch.randn(n_out, 1), torch.randn(n_in, 1)),))
    ids = tok("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = model(ids).logits
        with patched(model, [delta]):
            edited = model(ids).logits
            copy = working_copy(model, torch.bfloat16)
        copied = copy(ids).logits.float()
    assert not torch.allclose(plain, edited, atol=1e-2)
    # bfloat16 keeps ~3 significant digits: the copy follows the patched model, not the plain one.
    assert (copied - edited).abs().mean() < 0.1 * (plain - edited).abs().mean()


def _nll_in_model_dtype(model, tok, request, module, delta) -> float:
    groups = value_groups(model, tok, request, chat=True)
    hiddens = []
    for group in groups:

        def add(out, _name, group=group):
            out = out.clone()
            for b, pos in enumerate(group.batch.subject_positions):
                out[b, list(pos)] += delta
            return out

        with torch.no_grad(), Trace(model, [module], edit_output=add, retain_output=False):
            hiddens.append(_hidden(model, group))
    with torch.no_grad():
        return float(target_nll(model, groups, hiddens))


@pytest.mark.parametrize("setting", ["bfloat16", "model"])
def test_optimize_value_reports_the_nll_in_the_models_own_dtype(setting):
    model, tok = tiny("llama")
    (request,) = edit_requests(1)
    module = architecture_of(model).mlp_out_name(1)
    hp = replace(ValueHParams(), steps=12, work_dtype=setting)
    zero = _nll_in_model_dtype(model, tok, request, module, torch.zeros(model.config.hidden_size))
    result = optimize_value(model, tok, request, module, hp)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.delta.dtype == torch.float32 and result.init.dtype == torch.float32
    assert 0 < result.steps <= hp.steps
    # The NLL returned is the float32 one of the returned delta, whatever precision the steps ran in.
    assert result.nll == pytest.approx(_nll_in_model_dtype(model, tok, request, module, result.delta), abs=1e-4)
    assert result.nll < zero - 1.0, (zero, result.nll)


def test_optimize_value_finishes_in_full_precision_when_the_copy_stopped_early():
    """A stop criterion met in bfloat16 but not in float32 goes on in float32 (within the step budget)."""
    model, tok = tiny("llama")
    (request,) = edit_requests(1)
    module = architecture_of(model).mlp_out_name(1)
    seen = []
    hp = replace(ValueHParams(), steps=30, work_dtype="bfloat16", stop_nll=0.5)
    result = optimize_value(model, tok, request, module, hp, progress=lambda *a: seen.append(a))
    assert result.nll < 0.5 or result.steps == hp.steps
    assert [a[1] for a in seen] == list(range(1, len(seen) + 1))  # step numbers run on across both phases
