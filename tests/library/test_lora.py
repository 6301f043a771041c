"""Weight deltas as a PEFT LoRA adapter, checked with the real `peft` library on tiny random Llama and
GPT-2: the base model + the adapter gives the logits of the model with the deltas applied."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import methods
from methods.delta import Delta, Update, weight_of
from methods.lora import CONFIG_FILE, MIN_RANK, WEIGHTS_FILE, AdapterError, factor_dense, to_lora
from methods.stats import StatsCache, model_fingerprint
from tests.tiny_models import STATS, corpus, edit_requests, tiny

peft = pytest.importorskip("peft")

HPARAMS = {
    "rome": {"layer": 1, "value": {"steps": 6}, "stats": STATS},
    "memit": {"layers": [1, 2], "mom2_weight": 100.0, "value": {"steps": 6}, "stats": STATS},
    "alphaedit": {"layers": [1, 2], "nullspace_threshold": 0.05, "l2": 1.0, "value": {"steps": 6}, "stats": STATS},
    "ft": {"layer": 2, "steps": 4, "lr": 1e-2, "norm_constraint": 2e-2},
}
PROMPTS = ["Everyone has heard of the Eiffel Tower", "The train left the station at noon"]


@pytest.fixture(scope="module")
def stats() -> StatsCache:
    return StatsCache(corpus=corpus)


_DELTAS: dict[tuple[str, str], Delta] = {}


def delta_for(family: str, name: str, stats: StatsCache, index: int = 0) -> Delta:
    """One edit by `name` on tiny(family), computed once per module run."""
    key = (family, f"{name}{index}")
    if key not in _DELTAS:
        model, tok = tiny(family)
        method = methods.get(name)
        request = edit_requests(index + 1)[index]
        _DELTAS[key] = method.compute(model, tok, [request], method.hparams(model, **HPARAMS[name]), stats=stats)
    return _DELTAS[key]


def logits(model, tok) -> torch.Tensor:
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits.float()


def adapter_logits(family: str, folder) -> torch.Tensor:
    base, tok = tiny(family)
    peft_model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    return logits(peft_model, tok)


@pytest.mark.parametrize("names", [("rome",), ("memit",), ("alphaedit",), ("rome", "memit", "alphaedit")])
def test_peft_adapter_gives_the_edited_models_logits(family, names, stats, tmp_path):
    deltas = [delta_for(family, name, stats, i) for i, name in enumerate(names)]
    model, tok = tiny(family)
    fingerprint = model_fingerprint(model)
    base = logits(model, tok)
    applied = [d.apply(model) for d in deltas]
    edited = logits(model, tok)
    adapter = to_lora(deltas, model, base_model="tiny")
    for a in reversed(applied):
        a.undo()
    assert model_fingerprint(model) == fingerprint
    adapter.save(tmp_path)

    via_peft = adapter_logits(family, tmp_path)

    assert (edited - base).abs().max() > 1e-2  # the edits do change these logits
    torch.testing.assert_close(via_peft, edited, atol=1e-4, rtol=1e-4)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    modules = sorted({m for d in deltas for m in d.modules})
    assert config["target_modules"] == modules
    assert config["r"] == config["lora_alpha"] == max(MIN_RANK, *adapter.ranks.values())
    assert config["fan_in_fan_out"] == (family == "gpt2")
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert set(tensors) == {f"base_model.model.{m}.lora_{x}.weight" for m in modules for x in "AB"}
    for m in modules:
        out, inp = weight_of(model.get_submodule(m)).shape
        a, b = tensors[f"base_model.model.{m}.lora_A.weight"], tensors[f"base_model.model.{m}.lora_B.weight"]
        assert a.shape == (config["r"], inp) and b.shape == (out, config["r"])
        rank = sum(u.rank for d in deltas for u in d.updates if u.module == m)
        assert adapter.ranks[m] == rank
        assert not a[rank:].any() and not b[:, rank:].any()  # the padding is zeros


def test_dense_ft_update_is_factored_exactly(family, stats, tmp_path):
    """FT-L's change is a dense matrix: the adapter carries its SVD factors, at its numerical rank."""
    delta = delta_for(family, "ft", stats)
    (update,) = delta.updates
    assert update.right is None
    model, tok = tiny(family)
    applied = delta.apply(model)
    edited = logits(model, tok)
    applied.undo()
    adapter = to_lora([delta], model)
    adapter.save(tmp_path)
    torch.testing.assert_close(adapter_logits(family, tmp_path), edited, atol=1e-4, rtol=1e-4)
    assert adapter.rank == min(update.left.shape)  # Adam's steps are full rank


def test_factor_dense_keeps_the_numerical_rank():
    torch.manual_seed(0)
    m = torch.randn(40, 3) @ torch.randn(3, 30)
    left, right = factor_dense(m)
    assert left.shape == (40, 3) and right.shape == (30, 3)
    torch.testing.assert_close(left @ right.T, m, atol=1e-5, rtol=1e-5)


def test_refusals(family):
    model, _tok = tiny(family)
    with pytest.raises(AdapterError, match="no weight edits"):
        to_lora([], model)
    name = methods.architecture.architecture_of(model).mlp_out_name(1)
    out, inp = weight_of(model.get_submodule(name)).shape
    wide = Delta("rome", (Update(name, torch.randn(out, 12), torch.randn(inp, 12)),))
    with pytest.raises(AdapterError, match="rank 12 > 10"):
        to_lora([wide], model, max_rank=10)
    wrong = Delta("rome", (Update(name, torch.randn(out + 1, 1), torch.randn(inp, 1)),))
    with pytest.raises(AdapterError, match="another model"):
        to_lora([wrong], model)


def test_low_rank_deltas_keep_rank_and_pad_to_eight(family):
    model, _tok = tiny(family)
    name = methods.architecture.architecture_of(model).mlp_out_name(0)
    out, inp = weight_of(model.get_submodule(name)).shape
    d = Delta("rome", (Update(name, torch.randn(out, 1), torch.randn(inp, 1)),
                       Update(name, torch.randn(out, 2), torch.randn(inp, 2))))
    adapter = to_lora([d, copy.deepcopy(d)], model)
    assert adapter.ranks == {name: 6} and adapter.rank == 8
    a = adapter.tensors[f"base_model.model.{name}.lora_A.weight"]
    b = adapter.tensors[f"base_model.model.{name}.lora_B.weight"]
    torch.testing.assert_close(b @ a, 2 * (d.updates[0].matrix() + d.updates[1].matrix()), atol=1e-5, rtol=1e-5)
