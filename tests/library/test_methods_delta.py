"""Delta: apply / undo / revert, hook-patched forwards, serialisation, on tiny Llama and GPT-2 (Conv1D)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save as st_save

import methods
from methods.architecture import architecture_of, get_module
from methods.delta import Delta, Update, patched, weight_of
from methods.stats import StatsCache, model_fingerprint
from tests.tiny_models import STATS, corpus, edit_requests, tiny


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _dims(model, module: str) -> tuple[int, int]:
    out, inp = weight_of(get_module(model, module)).shape
    return out, inp


def hand_delta(model, seed: int = 1, dense: bool = True) -> Delta:
    """Two low-rank updates (one module twice, ranks 1 and 3) and optionally a dense one on another layer."""
    arch = architecture_of(model)
    g = torch.Generator().manual_seed(seed)
    a, b = arch.mlp_out_name(1), arch.mlp_out_name(2)
    out, inp = _dims(model, a)
    updates = [
        Update(a, torch.randn(out, 1, generator=g) * 0.05, torch.randn(inp, 1, generator=g) * 0.05),
        Update(a, torch.randn(out, 3, generator=g) * 0.05, torch.randn(inp, 3, generator=g) * 0.05),
    ]
    if dense:
        updates.append(Update(b, torch.randn(out, inp, generator=g) * 0.01))
    extras = {f"keys.{a}": torch.randn(2, inp, generator=g)}
    return Delta("hand", tuple(updates), {"note": "made by hand", "n": [1, 2]}, extras)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _ids(tok) -> torch.Tensor:
    return torch.tensor([tok("The Eiffel Tower is located in Paris.")["input_ids"]])


@pytest.mark.parametrize("dense", [False, True], ids=["low-rank", "low-rank+dense"])
def test_apply_then_undo_restores_bit_for_bit(family, dense):
    model, _ = tiny(family)
    before = _weights(model)
    delta = hand_delta(model, dense=dense)
    applied = delta.apply(model)
    after = _weights(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    expected = {f"{m}.weight" for m in delta.modules}
    assert changed == expected
    applied.undo()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_apply_adds_the_matrix_in_the_modules_orientation(family):
    """Llama's Linear stores (out, in), GPT-2's Conv1D (in, out): either way W x changes by (L R^T) x."""
    model, _ = tiny(family)
    delta = hand_delta(model, dense=False)
    module = get_module(model, delta.modules[0])
    x = torch.randn(5, _dims(model, delta.modules[0])[1])  # (N, in)
    with torch.no_grad():
        base = module(x)  # (N, out)
        applied = delta.apply(model)
        edited = module(x)
    applied.undo()
    change = sum(u.matrix() for u in delta.updates)  # (out, in)
    torch.testing.assert_close(edited - base, x @ change.T, atol=1e-5, rtol=1e-4)
    stored = module.weight
    assert stored.shape == ((change.shape[1], change.shape[0]) if family == "gpt2" else change.shape)


def test_revert_is_close(family):
    model, _ = tiny(family)
    before = _weights(model)
    delta = hand_delta(model)
    delta.apply(model)
    delta.revert(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_patched_matches_applied_and_leaves_weights(family):
    model, tok = tiny(family)
    ids = _ids(tok)
    base = _logits(model, ids)
    delta = hand_delta(model)
    fingerprint = model_fingerprint(model)
    with patched(model, [delta]):
        hooked = _logits(model, ids)
        assert model_fingerprint(model) == fingerprint
    assert model_fingerprint(model) == fingerprint
    assert not any(get_module(model, m)._forward_hooks for m in delta.modules)
    applied = delta.apply(model)
    written = _logits(model, ids)
    applied.undo()
    assert not torch.allclose(hooked, base, atol=1e-3)  # the delta does something
    torch.testing.assert_close(hooked, written, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(model, ids), base)  # hooks gone: the base model again


def test_patched_several_deltas_and_scale(family):
    model, tok = tiny(family)
    ids = _ids(tok)
    before = _weights(model)
    first, second = hand_delta(model, seed=1), hand_delta(model, seed=2, dense=False)
    with patched(model, [first, second]):
        both = _logits(model, ids)
    a1, a2 = first.apply(model), second.apply(model)
    written = _logits(model, ids)
    a2.undo()
    a1.undo()  # last applied, first undone: back to the original bits
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(both, written, atol=1e-4, rtol=1e-4)

    base = _logits(model, ids)
    with first.patched(model, scale=0.0):
        torch.testing.assert_close(_logits(model, ids), base)
    half = Delta("half", tuple(Update(u.module, u.left * 0.5, u.right) for u in first.updates))
    with first.patched(model, scale=0.5):
        scaled = _logits(model, ids)
    with half.patched(model):
        torch.testing.assert_close(scaled, _logits(model, ids), atol=1e-5, rtol=1e-5)


def _assert_same_delta(a: Delta, b: Delta) -> None:
    assert a.method == b.method
    assert a.meta == b.meta
    assert a.modules == b.modules
    assert len(a.updates) == len(b.updates)
    for u, v in zip(a.updates, b.updates, strict=True):
        assert u.module == v.module
        assert torch.equal(u.left, v.left)
        assert (u.right is None) == (v.right is None)
        if u.right is not None:
            assert torch.equal(u.right, v.right)
    assert a.extras.keys() == b.extras.keys()
    for k in a.extras:
        assert torch.equal(a.extras[k], b.extras[k])


def test_bytes_round_trip(family):
    model, _ = tiny(family)
    delta = hand_delta(model)
    data = delta.to_bytes()
    assert delta.to_bytes() == data  # deterministic: equal deltas, equal bytes, equal sha256
    back = Delta.from_bytes(data)
    _assert_same_delta(delta, back)
    assert methods.load_delta(data).sha256() == delta.sha256()
    assert back.to_bytes() == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
        st_save({"t": torch.zeros(2)}),
        st_save({"x.k": torch.zeros(2)}, metadata={"format": "1", "method": "m", "modules": '["a"]', "meta": "{}"}),
    ],
    ids=["empty", "garbage", "bad-header", "safetensors-without-delta-metadata", "module-without-tensors"],
)
def test_from_bytes_rejects_non_deltas(data):
    with pytest.raises(ValueError):
        Delta.from_bytes(data)


def test_from_bytes_rejects_truncated_delta():
    model, _ = tiny("gpt2")
    data = hand_delta(model).to_bytes()
    with pytest.raises(ValueError):
        Delta.from_bytes(data[: len(data) // 2])


def test_rome_delta_keeps_the_factored_form(family):
    """A ROME delta is two vectors per fact, kept as such through serialisation."""
    model, tok = tiny(family)
    rome = methods.get("rome")
    hparams = rome.hparams(model, layer=1, value={"steps": 2}, stats=STATS)
    delta = rome.compute(model, tok, edit_requests(1), hparams, stats=StatsCache(corpus=corpus))
    (update,) = delta.updates
    out, inp = _dims(model, update.module)
    assert update.module == architecture_of(model).mlp_out_name(1)
    assert update.left.shape == (out, 1)
    assert update.right.shape == (inp, 1)
    assert update.rank == 1
    assert torch.linalg.matrix_rank(update.matrix()) == 1
    back = Delta.from_bytes(delta.to_bytes())
    assert back.updates[0].left.shape == (out, 1) and back.updates[0].right.shape == (inp, 1)
    _assert_same_delta(delta, back)
