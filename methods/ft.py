"""FT-L (Zhu et al. 2020, as in the ROME/MEMIT tables): fine-tune one MLP output projection on the target,
each weight's change kept in an L-infinity ball. The baseline every table compares against.

The change is learnt as a separate tensor added through a hook, so the model is never modified; it
is dense (Adam's per-entry steps are not low-rank) and stored as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from methods.architecture import architecture_of, get_module
from methods.delta import Delta, Update, weight_of
from methods.hooks import added_output, frozen
from methods.hparams import FTHParams, for_model
from methods.kv import group_hiddens, target_nll, value_groups
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest

NAME = "ft"


def compute(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: FTHParams | None = None,
    *,
    progress: ProgressFn = silent,
    **_unused,
) -> Delta:
    """The dense change of one layer that makes the model say each target; the model is left unchanged."""
    hparams = hparams or for_model(FTHParams, model)
    module = architecture_of(model).mlp_out_name(hparams.layer)
    weight = weight_of(get_module(model, module))
    change = torch.zeros_like(weight, dtype=torch.float32, requires_grad=True)  # (out, in)
    groups = [value_groups(model, tokenizer, r, hparams.chat_prompts, hparams.contexts) for r in requests]
    optimizer = torch.optim.Adam([change], lr=hparams.lr)
    nll_value = float("inf")
    with frozen(model), added_output(model, {module: lambda x: x @ change.T.to(x.dtype)}):
        for step in range(1, hparams.steps + 1):
            optimizer.zero_grad()
            nll = torch.stack([target_nll(model, g, group_hiddens(model, g)) for g in groups]).mean()
            nll_value = float(nll.detach())
            progress("finetune", step, hparams.steps, nll_value)
            nll.backward()
            optimizer.step()
            with torch.no_grad():
                change.clamp_(-hparams.norm_constraint, hparams.norm_constraint)
    meta = {"method": NAME, "requests": [vars(r) for r in requests], "layer": hparams.layer, "final_nll": nll_value}
    return Delta(NAME, (Update(module, change.detach().cpu()),), meta)
