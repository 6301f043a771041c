"""The sequential benchmark's weight bookkeeping (bench/bench_counterfact.py): one copy of the edited
layers for the whole run, and the weights given back bit for bit at its end."""

from __future__ import annotations

import torch

from bench.bench_counterfact import apply_keeping_first
from bench.plot_sequential import plot, points
from methods import Applied, Delta, Update
from tests.tiny_models import tiny

MODULES = ("model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj")


def rank_one(model, module: str, seed: int) -> Delta:
    weight = model.get_submodule(module).weight  # (out, in)
    gen = torch.Generator().manual_seed(seed)
    left = torch.randn(weight.shape[0], 1, generator=gen)
    right = torch.randn(weight.shape[1], 1, generator=gen)
    return Delta("test", (Update(module, left, right),))


def test_many_deltas_keep_one_copy_per_module_and_undo_exactly():
    model, _ = tiny("llama")
    before = {m: model.get_submodule(m).weight.detach().clone() for m in MODULES}
    originals: dict[str, torch.Tensor] = {}
    for i in range(6):  # the first module edited six times, the second from the third edit on
        apply_keeping_first(model, rank_one(model, MODULES[0], i), originals)
        if i >= 2:
            apply_keeping_first(model, rank_one(model, MODULES[1], 10 + i), originals)
    assert set(originals) == set(MODULES)
    assert all(torch.equal(originals[m], before[m]) for m in MODULES)  # the weights before their first edit
    assert not torch.equal(model.get_submodule(MODULES[0]).weight, before[MODULES[0]])
    Applied(model, originals).undo()
    assert all(torch.equal(model.get_submodule(m).weight, before[m]) for m in MODULES)


def test_the_plotted_curve_ends_with_the_figures_after_the_last_edit(tmp_path):
    last = {"efficacy": 90.0, "paraphrase": 80.0, "neighbourhood": 75.0, "cases": 1000}
    figures = {**last, "curve": {"500": {**last, "efficacy": 95.0}, "250": {**last, "efficacy": 97.0}}}
    assert [(n, row["efficacy"]) for n, row in points(figures)] == [(250, 97.0), (500, 95.0), (1000, 90.0)]
    plot({"data": "x/counterfact-val.json", "mode": "sequential 1000", "methods": {"alphaedit": figures}},
         str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
