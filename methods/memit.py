"""MEMIT (Meng et al. 2023): many facts in one batch, spread over several layers.

Per layer: dW = R^T K (lambda C + K^T K)^-1, with K the edits' keys (n, in), R their residuals
(n, out) and C the keys' second moment over real text (lambda weighs preservation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from methods.delta import Delta
from methods.hparams import MemitHParams, for_model
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest
from methods.spread import spread
from methods.stats import StatsCache

NAME = "memit"


def compute(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: MemitHParams | None = None,
    *,
    stats: StatsCache | None = None,
    model_id: str | None = None,
    progress: ProgressFn = silent,
) -> Delta:
    """The delta writing all `requests` at once; the model itself is left unchanged."""
    hparams = hparams or for_model(MemitHParams, model)

    def solve(_i: int, _module: str, k: torch.Tensor, _r: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        a = hparams.mom2_weight * cov + k.T @ k  # (in, in)
        return torch.linalg.solve(a, k.T)  # (in, n): dW = R^T @ right^T

    delta, _ = spread(
        NAME, model, tokenizer, requests, hparams.layers, hparams.value, hparams.stats, solve,
        stats=stats or StatsCache(), model_id=model_id, progress=progress,
    )
    return delta
