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
  A step that moves unrelated text too far (`drift` over `max_drift`) is never taken: on SmolLM2 about
  one CounterFact edit in ten found its target only at steps (8-32) that garbled every answer.
- **Narrowing**: a request the bounded search leaves short is searched again with one module's update
  alone, under the same bound (`narrowed`); the layers' updates do not add up, and one of them moved
  further can carry an edit that all of them together could not carry within the bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from methods.hooks import added_output
from methods.hparams import MendHParams, StatsHParams
from methods.mend.batch import encode, row_hits, row_kl, row_nll
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


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokenizer, texts: Sequence[str], factors: Factors | None = None,
                        rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """((rows * N, T, V) log-probabilities, (rows * N, T) mask) of `texts` (N) repeated `rows` times,
    row r * N + i reading text i with row r of `factors` active (none: the model as it is)."""
    device = next(model.parameters()).device
    batch = encode(tokenizer, [(t, None) for t in texts] * rows, device)
    if factors is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    else:
        owner = torch.arange(rows).repeat_interleave(len(texts))  # (rows * N,)
        with edited(model, {n: (left[owner], right[owner]) for n, (left, right) in factors.items()}):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return torch.log_softmax(logits.float(), -1), batch.attention_mask.float()


@torch.no_grad()
def drift(model: nn.Module, tokenizer, factors: Factors, texts: Sequence[str],
          reference: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) how far row b's update moves the model on `texts`: the mean over texts of the mean per-token
    KL(unedited || edited) of the next-token distributions, in nats. `reference`: the unedited
    `next_token_logprobs(model, tokenizer, texts)[0]`, when already computed."""
    rows = next(iter(factors.values()))[0].shape[0]
    if reference is None:
        reference = next_token_logprobs(model, tokenizer, texts)[0]  # (N, T, V)
    now, mask = next_token_logprobs(model, tokenizer, texts, factors, rows)  # (B * N, T, V), (B * N, T)
    per_text = row_kl(reference.repeat(rows, 1, 1), now, mask)  # (B * N,)
    return per_text.reshape(rows, len(texts)).mean(-1).cpu()


@dataclass(frozen=True)
class StepSearch:
    """What the step search chose, per request: its step, and whether its target beats its rival there;
    `module`, when the request's update was narrowed to one module (`narrowed`), that module's name."""

    steps: torch.Tensor  # (B,) float64
    reached: torch.Tensor  # (B,) bool
    module: tuple[str | None, ...] = ()  # (B,) or () when none was narrowed

    def scaled(self, factors: Factors) -> Factors:
        """`factors` with row b multiplied by steps[b], in module[b] alone when it names one."""
        narrowed = self.module or (None,) * len(self.steps)
        out = {}
        for name, (left, right) in factors.items():
            keep = torch.tensor([float(m is None or m == name) for m in narrowed], dtype=torch.float64)  # (B,)
            out[name] = (left * (self.steps * keep).to(left)[:, None, None], right)
        return out


def chosen_steps(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factors: Factors,
                 steps: Sequence[float], max_drift: float | None = None,
                 drift_texts: Sequence[str] = ()) -> StepSearch:
    """For each request the first of `steps` at which its target beats its rival (`beats_rival`), else
    the last; with no `steps`, step 1 (whether it beats its rival is still checked). With `max_drift`
    (and `drift_texts`) no step whose `drift` exceeds it is taken: a request's search stops at the step
    before (the first step is kept even so), which may leave its edit short of its target rather than
    break unrelated text; `reached` then says so."""
    if not steps:
        return StepSearch(torch.ones(len(requests), dtype=torch.float64),
                          beats_rival(model, tokenizer, requests, factors).cpu())
    chosen = torch.full((len(requests),), float(steps[-1]), dtype=torch.float64)
    done = torch.zeros(len(requests), dtype=torch.bool)
    reached = torch.zeros(len(requests), dtype=torch.bool)
    bounded = max_drift is not None and bool(drift_texts)
    reference = next_token_logprobs(model, tokenizer, drift_texts)[0] if bounded else None
    for i, step in enumerate(steps):
        scaled = scaled_rows(factors, torch.full_like(chosen, step))
        if bounded and i > 0:
            over = (drift(model, tokenizer, scaled, drift_texts, reference) > max_drift) & ~done
            chosen[over] = float(steps[i - 1])
            done |= over
        beats = beats_rival(model, tokenizer, requests, scaled).cpu() & ~done
        chosen[beats] = float(step)
        reached |= beats
        done |= beats
        if bool(done.all()):
            break
    return StepSearch(chosen, reached)


def whitening(model: nn.Module, tokenizer, names: Sequence[str], ridge: float, spec: StatsHParams,
              stats: StatsCache | None, model_id: str | None) -> Inverses:
    """{module: (in, in) (C + ridge * mean diag C)^-1}, C its inputs' second moments over real text
    (computed once per `stats`)."""
    stats = stats or StatsCache()
    model_id = model_id or model_fingerprint(model)
    moments = stats.second_moments(model, tokenizer, list(names), spec, model_id=model_id)
    return {n: stats.derived(("mend-whiten", model_id, n, spec.n_tokens, ridge), lambda c=c: ridge_inverse(c, ridge))
            for n, c in moments.items()}


def one_module_rows(factors: Factors, rows: Sequence[int]) -> tuple[Factors, list[str]]:
    """For each row b of `rows` one candidate per module, in order: candidate (b, m) keeps row b's update
    of module m only ((len(rows) * M) rows); returned with the module each candidate keeps."""
    names = list(factors)
    owner = torch.tensor(list(rows)).repeat_interleave(len(names))  # (R * M,)
    kept = [n for _ in rows for n in names]
    out = {}
    for name, (left, right) in factors.items():
        keep = torch.tensor([float(k == name) for k in kept])  # (R * M,)
        out[name] = (left[owner] * keep.to(left)[:, None, None], right[owner])
    return out, kept


def narrowed(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factors: Factors, found: StepSearch,
             steps: Sequence[float], max_drift: float | None, drift_texts: Sequence[str]) -> StepSearch:
    """`found` with each request it left short searched again with one module's update alone, over
    `steps` and under the same drift bound: the smallest step at which some module's update makes the
    target beat its rival (the first such module) replaces the request's choice. One module moved
    further disturbs unrelated text less than all of them moved together (on SmolLM2, zsRE training
    rows that the bound stopped at steps 2-6 were reached by one layer's update at 16-48)."""
    short = [b for b in range(len(requests)) if not bool(found.reached[b])]
    if not short or not steps or len(factors) < 2:
        return found
    trial, kept = one_module_rows(factors, short)
    per = len(factors)
    tried = chosen_steps(model, tokenizer, [requests[b] for b in short for _ in range(per)], trial, steps,
                         max_drift, drift_texts)
    picks: dict[int, tuple[float, str]] = {}  # request -> (step, module)
    for i, b in enumerate(short):
        hits = [(float(tried.steps[r]), r) for r in range(i * per, (i + 1) * per) if bool(tried.reached[r])]
        if hits:
            step, r = min(hits)
            picks[b] = (step, kept[r])
    if picks and max_drift is not None and drift_texts:
        # chosen_steps never checks its first step's drift: each pick is checked here, on its own row
        rows = list(picks)
        alone = StepSearch(torch.tensor([picks[b][0] for b in rows], dtype=torch.float64),
                           torch.ones(len(rows), dtype=torch.bool), tuple(picks[b][1] for b in rows))
        over = drift(model, tokenizer, alone.scaled({n: (left[rows], right[rows]) for n, (left, right)
                                                     in factors.items()}), drift_texts) > max_drift
        picks = {b: picks[b] for b, too_far in zip(rows, over.tolist(), strict=True) if not too_far}
    steps_out, reached = found.steps.clone(), found.reached.clone()
    for b, (step, _) in picks.items():
        steps_out[b], reached[b] = step, True
    return StepSearch(steps_out, reached, tuple(picks[b][1] if b in picks else None for b in range(len(requests))))


def reshaped(model: nn.Module, tokenizer, requests: Sequence[EditRequest], factors: Factors, hparams: MendHParams,
             stats: StatsCache | None, model_id: str | None, ridge: float | None = None,
             at_subject: bool = False) -> tuple[Factors, StepSearch]:
    """The editor's factors whitened (with `ridge`, else `hparams.whiten`, if either is set) and scaled
    per request by its chosen step (see the module's docstring); returns them with the search's result.
    The steps searched are `hparams.steps`, else `hparams.subject_steps` for an editor `at_subject`;
    requests the search leaves short are searched again one module at a time (`narrowed`,
    `hparams.narrow_steps`)."""
    ridge = ridge if ridge is not None else hparams.whiten
    if ridge is not None:
        factors = whitened(factors, whitening(model, tokenizer, list(factors), ridge, hparams.stats, stats, model_id))
    search = hparams.steps or (hparams.subject_steps if at_subject else ())
    found = chosen_steps(model, tokenizer, requests, factors, search, hparams.max_drift, hparams.drift_texts)
    if search:
        found = narrowed(model, tokenizer, requests, factors, found, hparams.narrow_steps, hparams.max_drift,
                         hparams.drift_texts)
    return found.scaled(factors), found
