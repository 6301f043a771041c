"""Knowledge neurons (Dai et al. 2022), kept as a baseline: locate by integrated gradients, then edit values.

Attribution: for each layer, the MLP's intermediate activation a (the input of down_proj / c_proj) at
the positions that predict the old answer's tokens is scaled by s in 1/m, 2/m, ..., 1, and
    score_i = a_i * mean_s dP(answer | s a)/d(s a)_i
(a Riemann sum of the integral from 0 to a; one step would be a plain gradient at a, not an integral).
Neurons scoring above `threshold` times the top score are selected; each one's value vector (its
column of down_proj's (out, in) weight: a row of GPT-2's Conv1D c_proj) is moved by
    -erase_scale * E(old answer) + write_scale * E(new answer),
E being the mean output embedding of the answer's tokens (the word embedding, for tied models),
with the sign of the neuron's activation: the paper's GELU activations are positive, a gated MLP's
(Llama's SiLU(gate) * up) are not, and a negative activation would turn the move around.
The delta has one column per selected neuron: left = the moves (out, k), right = one-hot (in, k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from methods.architecture import architecture_of, get_module
from methods.delta import Delta, Update, patched, weight_of
from methods.gradients import Taps
from methods.hooks import frozen
from methods.hparams import KNHParams, for_model
from methods.kv import target_token_ids
from methods.mend.batch import TokenBatch, encode
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest

NAME = "kn"


def old_answer(model: nn.Module, tokenizer, text: str) -> str:
    """The model's own next token after `text`: the answer to replace when the request names none."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    with torch.no_grad():
        token = int(model(input_ids=ids).logits[0, -1].argmax())
    return tokenizer.decode([token]).strip() or tokenizer.decode([token])


def layer_attribution(model: nn.Module, batch: TokenBatch, module: str,
                      steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(in,) integrated-gradient scores of `module`'s input features for P(answer tokens), and (in,)
    the features' mean activation over the answer's positions."""
    m = get_module(model, module)
    weight = weight_of(m).detach()  # (out, in)
    bias = getattr(m, "bias", None)
    pos = list(batch.positions[0])
    s = torch.arange(1, steps + 1, dtype=weight.dtype, device=weight.device) / steps  # (m,)
    ids = batch.input_ids.expand(steps, -1)  # (m, T): one row per step of the integral
    mask = batch.attention_mask.expand(steps, -1)

    def scale(out: torch.Tensor, _name: str) -> torch.Tensor:
        # W(s a) + b = s (W a + b) + (1 - s) b: scaling the input, done at the output.
        out = out.clone()
        out[:, pos] = s[:, None, None] * out[:, pos]
        if bias is not None:
            out[:, pos] = out[:, pos] + (1 - s)[:, None, None] * bias
        return out

    with frozen(model), Taps(model, [module], transform=scale) as taps:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (m, T, V)
        probs = logits[:, pos].float().softmax(-1)  # (m, n, V)
        p = probs[:, range(len(pos)), list(batch.target_ids[0])].sum()  # rows are independent
        delta = taps.gradients(p)[module][:, pos]  # (m, n, out): dP/d(output)
    grad_a = delta.float() @ weight.float()  # (m, n, in): dP/d(s a), as output = W (s a) + b
    a = taps.inputs[module][0, pos].float()  # (n, in), the same in every row
    return (a * grad_a.mean(0)).sum(0), a.mean(0)  # (in,), (in,)


def select(scores: dict[str, torch.Tensor], threshold: float, max_neurons: int) -> list[tuple[str, int, float]]:
    """(module, neuron, score) above `threshold` * the top score over all layers, best first, capped."""
    top = max(float(v.max()) for v in scores.values())
    chosen = [
        (name, int(i), float(v[i])) for name, v in scores.items() for i in torch.nonzero(v > threshold * top).flatten()
    ]
    return sorted(chosen, key=lambda c: -c[2])[:max_neurons] if top > 0 else []


def answer_embedding(model: nn.Module, tokenizer, text: str, answer: str) -> torch.Tensor:
    """(d,) mean output embedding of the answer's tokens as they follow `text`."""
    ids = target_token_ids(tokenizer, text, answer)
    return model.get_output_embeddings().weight[ids].detach().float().mean(0)


def compute(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: KNHParams | None = None,
    *,
    progress: ProgressFn = silent,
    **_unused,
) -> Delta:
    """The value-vector edits for `requests`, one after another (each seeing the ones before through
    hooks); the model is left unchanged. The old answer is `target_true`, else the model's next token."""
    arch = architecture_of(model)
    hparams = hparams or for_model(KNHParams, model)
    modules = [arch.mlp_out_name(i) for i in hparams.layers]
    device = next(model.parameters()).device
    widths = {m: weight_of(get_module(model, m)).shape[1] for m in modules}  # in features
    columns: dict[str, list[tuple[int, torch.Tensor]]] = {}
    found = []
    for r_index, request in enumerate(requests):
        so_far = _delta(columns, widths, requests, found)
        with patched(model, [so_far]):
            old = request.target_true or old_answer(model, tokenizer, request.text)
            batch = encode(tokenizer, [(request.text, old)], device)
            scores, acts = {}, {}
            for j, module in enumerate(modules):
                scores[module], acts[module] = layer_attribution(model, batch, module, hparams.steps)
                progress("attribution", r_index * len(modules) + j + 1, len(requests) * len(modules))
        move = (hparams.write_scale * answer_embedding(model, tokenizer, request.text, request.target)
                - hparams.erase_scale * answer_embedding(model, tokenizer, request.text, old))  # (out,)
        chosen = select(scores, hparams.threshold, hparams.max_neurons)
        for module, neuron, _score in chosen:
            sign = 1.0 if float(acts[module][neuron]) >= 0 else -1.0  # a gated MLP's activations are signed
            columns.setdefault(module, []).append((neuron, sign * move))
        found.append([[module, neuron, score] for module, neuron, score in chosen])
    return _delta(columns, widths, requests, found)


def _delta(columns: dict[str, list[tuple[int, torch.Tensor]]], widths: dict[str, int],
           requests: Sequence[EditRequest], found: list) -> Delta:
    updates = []
    for module, cols in columns.items():
        left = torch.stack([move for _i, move in cols], 1)  # (out, k)
        right = torch.zeros(widths[module], len(cols))  # (in, k) one-hot
        for k, (neuron, _move) in enumerate(cols):
            right[neuron, k] = 1.0
        updates.append(Update(module, left.cpu(), right))
    meta = {"method": NAME, "requests": [vars(r) for r in requests], "neurons": found}
    return Delta(NAME, tuple(updates), meta)
