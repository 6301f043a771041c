"""ROME (Meng et al. 2022): a rank-one update of one MLP output projection per fact.

W k* = v* with k* the subject's key and v* an optimised value, keeping C-whitened keys unchanged:
    dW = (v* - W k*) (C^-1 k*)^T / (k*^T C^-1 k*)
Several requests are edited one after another, each computed on the model as changed by the ones
before (through hooks: the weights themselves are never touched).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from methods.architecture import architecture_of
from methods.delta import Delta, Update, patched
from methods.hparams import RomeHParams, for_model
from methods.kv import compute_keys, optimize_value
from methods.own_answer import OwnAnswer
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest
from methods.stats import StatsCache

NAME = "rome"


def compute(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: RomeHParams | None = None,
    *,
    stats: StatsCache | None = None,
    model_id: str | None = None,
    progress: ProgressFn = silent,
    answers: Sequence[Sequence[OwnAnswer]] = (),
) -> Delta:
    """The delta that writes `requests` into the model; the model itself is left unchanged.

    `answers[i]`: the unedited model's own answers to questions about request i's subject, kept away from
    the replaced fact while its value is optimised (`methods.own_answer`; none when omitted)."""
    hparams = hparams or for_model(RomeHParams, model)
    stats = stats or StatsCache()
    module = architecture_of(model).mlp_out_name(hparams.layer)
    cov = stats.second_moments(model, tokenizer, [module], hparams.stats, model_id=model_id, progress=progress)[module]
    cov = cov + hparams.ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], device=cov.device)
    updates: list[Update] = []
    nlls = []
    for i, request in enumerate(requests):
        so_far = Delta(NAME, tuple(updates))
        v = hparams.value
        with patched(model, [so_far]):
            key = compute_keys(model, tokenizer, module, [request], v.chat_prompts, v.contexts)[0]  # (in,)
            value = optimize_value(model, tokenizer, request, module, v, progress,
                                   answers[i] if i < len(answers) else ())
        whitened = torch.linalg.solve(cov, key)  # C^-1 k: (in,)
        right = whitened / (key @ whitened)  # so that dW k = delta exactly
        # delta is what must be added to the output at k: W k + dW k = init + delta.
        updates.append(Update(module, value.delta[:, None].cpu(), right[:, None].cpu()))
        nlls.append(value.nll)
    meta = {
        "method": NAME,
        "requests": [vars(r) for r in requests],
        "layer": hparams.layer,
        "final_nll": nlls,
    }
    return Delta(NAME, tuple(updates), meta)
