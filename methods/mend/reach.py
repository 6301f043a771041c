"""How far a learned editor's update reaches, decided at edit time after the trained editor.

MEND's gradients are taken where the target is predicted, and in the last layers that position carries
the relation as much as the subject: the editor's update moves every subject of the relation (on
SmolLM2 the shipped editor kept 35-40% of CounterFact neighbourhoods). Two steps, neither retrained:

- **Whitening** (ROME's key): each rank-one term's input side x~ becomes C^-1 x~, rescaled so that the
  term changes the edit's own key exactly as before; directions common in text (C's large ones) are
  then moved far less, so other subjects of the same relation are disturbed less.
- **The step search**: each request's update is multiplied by the first of `steps` at which its
  target beats its rival on the request's own prompt (the old answer when the request names it,
  else the target must be the top prediction at every one of its tokens): no longer than needed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from methods.hooks import added_output
from methods.hparams import MendHParams, StatsHParams
from methods.mend.batch import encode, row_hits, row_nll
from methods.requests import EditRequest
from methods.stats import StatsCache, model_fingerprint

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (left (B, out, R), right (B, in, R))
Inverses = dict[str, torch.Tensor]  # module -> (in, in) whitening inverse


@contextmanager
def edited(model: nn.Module, factors: Factors) -> Iterator[None]:
    """While inside, row b of any batch sees W + left_b right_b^T (through hooks; weights untouched)."""

    def make(left: torch.Tensor, right: torch.Tensor):
        def add(x: torch.Tensor) -> torch.Tensor:  # (B, T, in)
            return (x @ right.to(x.dtype)) @ left.to(x.dtype).transpose(1, 2)  # (B, T, R) -> (B, T, out)
        return add

    with added_output(model, {n: make(left, right) for n, (left, right) in factors.items()}):
        yield


def ridge_inverse(moments: torch.Tensor, ridge: float) -> torch.Tensor:
    """(in, in) (C + ridge * mean(diag C) * I)^-1, in float32 (solved in float64)."""
    c = moments.double()
    eye = torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.linalg.inv(c + ridge * c.diagonal().mean() * eye).float()


def whitened(factors: Factors, inverses: Inverses) -> Factors:
    """Each term's right side r -> C^-1 r * (r.r / r.C^-1 r): its effect on its own key r is unchanged.
    Zero (padding) columns stay zero."""
    out = {}
    for name, (left, right) in factors.items():
        w = torch.einsum("ij,bjr->bir", inverses[name].to(right), right)  # (B, in, R)
        own = (right * right).sum(1, keepdim=True)  # (B, 1, R)
        cross = (right * w).sum(1, keepdim=True)  # (B, 1, R); > 0 for r != 0, C^-1 being positive definite
        gain = torch.where(cross > 0, own / cross.clamp_min(torch.finfo(cross.dtype).tiny), torch.zeros_like(own))
        out[name] = (left, w * gain)
    return out


def scaled_rows(factors: Factors, scales: torch.Tensor) -> Factors:
    """Row b's update multiplied by scales[b] (B,)."""
    return {n: (left * scales.to(left)[:, None, None], right) for n, (left, right) in factors.items()}


@torch.no_grad()
def beats_rival(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factors: Factors) -> torch.Tensor:
    """(B,) bool: with row b's update active, does request b's target beat its rival on its prompt?
    Rival: `target_true` (summed log-probabilities, CounterFact's efficacy test) when given, else the
    target must be the argmax at each of its tokens."""
    device = next(model.parameters()).device
    targets = encode(tokenizer, [(r.text, r.target) for r in requests], device)
    rivals = encode(tokenizer, [(r.text, r.target_true or r.target) for r in requests], device)
    with edited(model, factors):
        logits = model(input_ids=targets.input_ids, attention_mask=targets.attention_mask, use_cache=False).logits
        rival_logits = model(input_ids=rivals.input_ids, attention_mask=rivals.attention_mask,
                             use_cache=False).logits
    lengths = torch.tensor([len(ids) for ids in targets.target_ids], device=device)
    rival_lengths = torch.tensor([len(ids) for ids in rivals.target_ids], device=device)
    target_lp = -row_nll(logits, targets) * lengths  # (B,) summed log P(target | prompt)
    rival_lp = -row_nll(rival_logits, rivals) * rival_lengths  # (B,)
    named = torch.tensor([bool(r.target_true) for r in requests], device=device)
    return torch.where(named, target_lp > rival_lp, row_hits(logits, targets).to(device) > 0)


def chosen_steps(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factors: Factors,
                 steps: Sequence[float]) -> torch.Tensor:
    """(B,) for each request the first of `steps` at which its target beats its rival (`beats_rival`),
    else the last; all ones when `steps` is empty."""
    chosen = torch.full((len(requests),), float(steps[-1]) if steps else 1.0, dtype=torch.float64)
    done = torch.zeros(len(requests), dtype=torch.bool)
    for step in steps:
        reached = beats_rival(model, tokenizer, requests, scaled_rows(factors, torch.full_like(chosen, step))).cpu()
        chosen[reached & ~done] = float(step)
        done |= reached
        if bool(done.all()):
            break
    return chosen


def whitening(model: nn.Module, tokenizer, names: Sequence[str], ridge: float, spec: StatsHParams,
              stats: StatsCache | None, model_id: str | None) -> Inverses:
    """{module: (in, in) (C + ridge * mean diag C)^-1}, C its inputs' second moments over real text
    (computed once per `stats`)."""
    stats = stats or StatsCache()
    model_id = model_id or model_fingerprint(model)
    moments = stats.second_moments(model, tokenizer, list(names), spec, model_id=model_id)
    return {n: stats.derived(("mend-whiten", model_id, n, spec.n_tokens, ridge), lambda c=c: ridge_inverse(c, ridge))
            for n, c in moments.items()}


def reshaped(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factors: Factors, hparams: MendHParams,
             stats: StatsCache | None, model_id: str | None, ridge: float | None = None,
             at_subject: bool = False) -> tuple[Factors, torch.Tensor]:
    """The editor's factors whitened (with `ridge`, else `hparams.whiten`, if either is set) and scaled
    per request by its chosen step (see the module's docstring); returns them with the steps (B,).
    The steps searched are `hparams.steps`, else `hparams.subject_steps` for an editor `at_subject`."""
    ridge = ridge if ridge is not None else hparams.whiten
    if ridge is not None:
        factors = whitened(factors, whitening(model, tokenizer, list(factors), ridge, hparams.stats, stats, model_id))
    search = hparams.steps or (hparams.subject_steps if at_subject else ())
    steps = chosen_steps(model, tokenizer, requests, factors, search)
    return scaled_rows(factors, steps), steps
