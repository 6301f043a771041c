"""AlphaEdit (Fang et al. 2025): MEMIT's update projected onto the null space of preserved knowledge.

P projects onto the span of C's smallest eigenvectors (directions that real text barely uses), and the
update has the form dW = D P, so outputs for ordinary keys (P k0 ~ 0) stay put. Keys of earlier edits
join the constraint, which is what keeps hundreds of sequential edits from overwriting each other: each
delta carries its keys (`extras`), and `compute(..., prior=[earlier deltas])` protects them.
    right = (P (K^T K + K_p^T K_p) + l2 I)^-1 P K^T,   dW = R^T right^T
Experimental, off by default (`AlphaEditHParams`): `nullspace_energy` chooses P's directions by the
share of C's trace they hold rather than by the top eigenvalue, `preserve` adds lambda C inside the
bracket (MEMIT's term), for models whose "null space" real text still uses, and `bank` adds other
subjects' keys (frequent names in the corpus, `methods.bank`) to K_p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from methods.bank import entity_names, name_keys
from methods.delta import Delta
from methods.hparams import AlphaEditHParams, for_model
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest
from methods.spread import spread
from methods.stats import StatsCache, model_fingerprint

NAME = "alphaedit"


def null_space_projector(cov: torch.Tensor, threshold: float, energy: float | None = None) -> torch.Tensor:
    """(in, in) projector onto the eigenvectors of `cov` that real text barely uses: those with eigenvalue
    < threshold * the largest or, given `energy`, the smallest ones whose eigenvalues sum to at most
    `energy` * the trace (what ordinary keys may still carry there, the same fraction in every layer)."""
    values, vectors = torch.linalg.eigh(cov.double())  # ascending
    if energy is None:
        chosen = values < threshold * values.max()
    else:
        chosen = torch.cumsum(values, 0) <= energy * values.sum()
    small = vectors[:, chosen]
    return small @ small.T


def compute(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: AlphaEditHParams | None = None,
    *,
    prior: Sequence[Delta] = (),
    stats: StatsCache | None = None,
    model_id: str | None = None,
    progress: ProgressFn = silent,
) -> Delta:
    """The delta for `requests`, constrained not to disturb text statistics nor the `prior` edits."""
    hparams = hparams or for_model(AlphaEditHParams, model)
    stats = stats or StatsCache()
    model_id = model_id or model_fingerprint(model)
    threshold, energy = hparams.nullspace_threshold, hparams.nullspace_energy
    edited = {r.subject.casefold() for r in requests}

    def solve(_i: int, module: str, k: torch.Tensor, _r: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        # An eigendecomposition per layer (~1 s at 1,536 wide): made once per covariance, not per edit.
        key = ("nullspace", model_id, module, hparams.stats.n_tokens, threshold, energy)
        p = stats.derived(key, lambda: null_space_projector(cov, threshold, energy)).to(k)
        # One product over all earlier keys: a sum of per-edit outer products would write an (in, in)
        # matrix per prior edit, which made the 1,000th sequential edit ~20 s slower than the first.
        olds = [d.extras[f"keys.{module}"].to(k) for d in prior if f"keys.{module}" in d.extras]
        kept = torch.cat(olds).T @ torch.cat(olds) if olds else torch.zeros_like(cov)  # (in, in)
        if hparams.preserve:
            kept = kept + hparams.preserve * cov  # ordinary keys weighed too, not only projected away
        if hparams.bank:  # other subjects' keys held in place (the edits' own subjects are not "other")
            names = stats.derived(("bank names", hparams.bank), lambda: entity_names(stats.corpus(), hparams.bank))
            bank = stats.derived(("bank", model_id, module, hparams.bank),
                                 lambda: name_keys(model, tokenizer, module, names)).to(k)  # (n_bank, in)
            bank = bank[[i for i, name in enumerate(names) if name.casefold() not in edited]]
            kept = kept + hparams.bank_weight * bank.T @ bank
        a = p @ (k.T @ k + kept) + hparams.l2 * torch.eye(cov.shape[0], dtype=k.dtype, device=k.device)
        return torch.linalg.solve(a, p @ k.T)  # (in, n)

    delta, keys = spread(
        NAME, model, tokenizer, requests, hparams.layers, hparams.value, hparams.stats, solve,
        stats=stats, model_id=model_id, progress=progress,
    )
    extras = {f"keys.{module}": k for module, k in keys.items()}
    return Delta(NAME, delta.updates, delta.meta, extras)
