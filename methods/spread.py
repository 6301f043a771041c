"""MEMIT's multi-layer spread, shared by MEMIT and AlphaEdit: target residuals, then layer-by-layer solves.

Both methods compute, per edit, a target for the residual stream after the last edited layer (z),
then for each layer l (lowest first, with the updates below it in effect) the keys K_l and the
residual still missing, R = (z - current) / layers_left. Only the linear solve differs, so it is
passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from methods.architecture import architecture_of
from methods.delta import Delta, Update, patched
from methods.hparams import StatsHParams, ValueHParams
from methods.kv import compute_keys, compute_outputs, optimize_value
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest
from methods.stats import StatsCache

# solve(layer_index, module, keys (n, in), residual (n, out), covariance (in, in)) -> right factor (in, n)
Solver = Callable[[int, str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def spread(
    method: str,
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    layers: Sequence[int],
    value: ValueHParams,
    stats_spec: StatsHParams,
    solve: Solver,
    *,
    stats: StatsCache,
    model_id: str | None,
    progress: ProgressFn = silent,
) -> tuple[Delta, dict[str, torch.Tensor]]:
    """The multi-layer delta (rank n per layer) and the keys used at each layer ({module: (n, in)})."""
    arch = architecture_of(model)
    modules = [arch.mlp_out_name(layer) for layer in layers]
    covs = stats.second_moments(model, tokenizer, modules, stats_spec, model_id=model_id, progress=progress)
    z_module = arch.layer_name(layers[-1])
    results = [optimize_value(model, tokenizer, r, z_module, value, progress) for r in requests]
    z = torch.stack([r.target for r in results])  # (n, d)
    updates: list[Update] = []
    keys: dict[str, torch.Tensor] = {}
    for i, module in enumerate(modules):
        with patched(model, [Delta(method, tuple(updates))]):
            k = compute_keys(model, tokenizer, module, requests, value.chat_prompts, value.contexts)  # (n, in)
            current = compute_outputs(model, tokenizer, z_module, requests, value.chat_prompts, value.contexts)  # (n, d)
        residual = (z - current) / (len(modules) - i)  # (n, d): this layer's share
        right = solve(i, module, k.double(), residual.double(), covs[module].double())  # (in, n)
        updates.append(Update(module, residual.T.float().cpu(), right.float().cpu()))
        keys[module] = k.cpu()
        progress("layers", i + 1, len(modules))
    meta = {
        "method": method,
        "requests": [vars(r) for r in requests],
        "layers": list(layers),
        "final_nll": [r.nll for r in results],
    }
    return Delta(method, tuple(updates), meta), keys
