"""Trace and added_output: what they record and edit, early stopping, and that no hook outlives them."""

from __future__ import annotations

import pytest
import torch

from methods.architecture import UnsupportedModel, architecture_of, get_module
from methods.hooks import Trace, added_output
from tests.tiny_models import tiny


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok("The Eiffel Tower is located in Paris.")["input_ids"]] * 2)  # (2, T)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_trace_records_inputs_and_outputs(family):
    model, tok = tiny(family)
    arch = architecture_of(model)
    ids = _ids(tok)
    mlp_out, block = arch.mlp_out_name(1), arch.layer_name(1)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)  # transformers keeps hooks of its own for this
    hooks = _hook_count(model)
    with torch.no_grad(), Trace(model, [mlp_out, block], retain_input=True) as trace:
        model(input_ids=ids)
    x, y = trace.inputs[mlp_out], trace.outputs[mlp_out]
    assert x.shape == (*ids.shape, model.config.hidden_size * (2 if family == "llama" else 4))  # (B, T, in)
    assert y.shape == (*ids.shape, model.config.hidden_size)  # (B, T, out)
    with torch.no_grad():
        torch.testing.assert_close(get_module(model, mlp_out)(x), y)
    # A block's output is the residual stream: hidden_states[i + 1] for block i.
    torch.testing.assert_close(trace.outputs[block], out.hidden_states[2])
    torch.testing.assert_close(trace.inputs[block], out.hidden_states[1])
    assert not trace.outputs[block].requires_grad
    assert _hook_count(model) == hooks


def test_trace_without_detach_keeps_the_graph(family):
    model, tok = tiny(family)
    name = architecture_of(model).mlp_out_name(0)
    with Trace(model, [name], detach=False) as trace:
        model(input_ids=_ids(tok))
    assert trace.outputs[name].requires_grad


def test_stop_ends_the_pass_after_the_last_module(family):
    model, tok = tiny(family)
    arch = architecture_of(model)
    later_calls = []
    handle = get_module(model, arch.layer_name(2)).register_forward_hook(lambda *_: later_calls.append(1))
    reached_end = False
    try:
        with Trace(model, [arch.mlp_out_name(0), arch.layer_name(1)], stop=True) as trace:
            model(input_ids=_ids(tok))
            reached_end = True  # not reached: the pass raised StopForward, which the Trace swallowed
    finally:
        handle.remove()
    assert not reached_end
    assert later_calls == []
    assert set(trace.outputs) == {arch.mlp_out_name(0), arch.layer_name(1)}
    assert _hook_count(model) == 0


def test_stop_waits_for_every_module_whatever_their_listed_order(family):
    # a layer's output projection listed before the matrix that runs first (as a name sort puts
    # Llama's down_proj before gate/up_proj): every module is still recorded, on every pass
    model, tok = tiny(family)
    arch = architecture_of(model)
    names = [arch.mlp_out_name(1), arch.layer_name(0), arch.mlp_out_name(0)]
    for _ in range(2):
        with Trace(model, names, retain_input=True, stop=True) as trace:
            model(input_ids=_ids(tok))
        assert set(trace.inputs) == set(names)


def test_edit_output_replaces_the_output(family):
    model, tok = tiny(family)
    ids = _ids(tok)
    name = architecture_of(model).mlp_out_name(1)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with Trace(model, [name], edit_output=lambda y, _name: torch.zeros_like(y)) as trace:
            zeroed = model(input_ids=ids).logits
        with Trace(model, [name], edit_output=lambda y, _name: y):
            same = model(input_ids=ids).logits
    assert torch.equal(trace.outputs[name], torch.zeros_like(trace.outputs[name]))  # records the edited output
    assert not torch.allclose(zeroed, base, atol=1e-3)
    torch.testing.assert_close(same, base)


def test_hooks_removed_on_exit_and_after_an_exception(family):
    model, tok = tiny(family)
    arch = architecture_of(model)
    names = [arch.mlp_out_name(0), arch.layer_name(1), arch.mlp_out_name(3)]
    modules = [get_module(model, n) for n in names]
    assert all(len(m._forward_hooks) == 0 for m in modules)
    with Trace(model, names):
        assert all(len(m._forward_hooks) == 1 for m in modules)
    assert _hook_count(model) == 0

    with pytest.raises(RuntimeError, match="boom"), Trace(model, names, stop=True):
        assert _hook_count(model) == 3
        raise RuntimeError("boom")
    assert _hook_count(model) == 0

    def broken(_y, _name):
        raise KeyError("inside a hook")

    with pytest.raises(KeyError, match="inside a hook"), Trace(model, names, edit_output=broken):
        model(input_ids=_ids(tok))
    assert _hook_count(model) == 0


def test_trace_of_an_unknown_module_raises_and_leaves_no_hook(family):
    model, _ = tiny(family)
    arch = architecture_of(model)
    with pytest.raises(UnsupportedModel, match="no module"):
        Trace(model, [arch.mlp_out_name(0), "no.such.module"])
    assert _hook_count(model) == 0


def test_added_output_adds_a_function_of_the_input(family):
    model, tok = tiny(family)
    name = architecture_of(model).mlp_out_name(1)
    module = get_module(model, name)
    x = torch.randn(3, 5, module.weight.shape[0 if family == "gpt2" else 1])  # (B, T, in)
    with torch.no_grad():
        base = module(x)
        with added_output(model, {name: lambda inp: 2 * inp[..., :1]}):
            added = module(x)
            assert len(module._forward_hooks) == 1
    torch.testing.assert_close(added, base + 2 * x[..., :1])
    assert _hook_count(model) == 0

    with pytest.raises(RuntimeError), added_output(model, {name: lambda inp: inp}):
        raise RuntimeError
    assert _hook_count(model) == 0
