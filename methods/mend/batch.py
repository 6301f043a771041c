"""Edit inputs as token batches: each text tokenised together with its target, labels only on the target.

The target is never tokenised apart from its prompt (EasyEdit's misaligned-label bug): the target's
ids are the tail of the joint tokenisation of `text + " " + target` (`methods.kv.target_token_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.kv import target_token_ids
from methods.tokens import right_padded, subject_last_tokens


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded rows; `positions[b]` are the positions whose logits predict row b's target ids."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    positions: tuple[tuple[int, ...], ...]
    target_ids: tuple[tuple[int, ...], ...]


def encode(tokenizer, pairs: Sequence[tuple[str, str | None]], device: torch.device | str = "cpu") -> TokenBatch:
    """Rows `text + target` (tokenised together) or `text` alone when the target is None."""
    rows, positions, targets = [], [], []
    for text, target in pairs:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if target is None:
            positions.append(())
            targets.append(())
        else:
            t_ids = target_token_ids(tokenizer, text, target)
            positions.append(tuple(range(len(ids) - 1, len(ids) - 1 + len(t_ids))))  # logits at p predict p+1
            targets.append(tuple(t_ids))
            ids = ids + t_ids[:-1]
        rows.append(ids)
    input_ids, mask = right_padded(tokenizer, rows, device)
    return TokenBatch(input_ids, mask, tuple(positions), tuple(targets))


def row_nll(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """(B,) each row's mean NLL over its target tokens, from logits (B, T, V)."""
    out = []
    for b, (pos, ids) in enumerate(zip(batch.positions, batch.target_ids, strict=True)):
        log_probs = F.log_softmax(logits[b, list(pos)].float(), -1)  # (n, V)
        out.append(-log_probs[range(len(ids)), list(ids)].mean())
    return torch.stack(out)


def row_hits(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """(B,) 1.0 where every target token is the argmax under teacher forcing, else 0.0."""
    out = []
    for b, (pos, ids) in enumerate(zip(batch.positions, batch.target_ids, strict=True)):
        guess = logits[b, list(pos)].argmax(-1)  # (n,)
        out.append(float(guess.tolist() == list(ids)))
    return torch.tensor(out)


def gather_rows(hidden: torch.Tensor, positions: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """(B, width, d): each row's vectors at its positions, zero-padded to `width`."""
    rows = [F.pad(hidden[b, list(pos)], (0, 0, 0, width - len(pos))) for b, pos in enumerate(positions)]
    return torch.stack(rows)


def position_mask(positions: Sequence[Sequence[int]], width: int, device) -> torch.Tensor:
    """(B, width) 1.0 where a row has a position, 0.0 in its padding."""
    mask = torch.zeros(len(positions), width, device=device)
    for b, pos in enumerate(positions):
        mask[b, : len(pos)] = 1.0
    return mask


def subject_sites(tokenizer, texts: Sequence[str], subjects: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """Per text (tokenised as `encode` does): the subject's last token at each of its occurrences, where a
    locate-then-edit method reads the subject; the text's last token when the subject does not occur."""
    sites = []
    for text, subject in zip(texts, subjects, strict=True):
        try:
            sites.append(subject_last_tokens(tokenizer, text, subject))
        except ValueError:
            sites.append((len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 1,))
    return tuple(sites)


def row_kl(base: torch.Tensor, after: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B,) each row's weighted mean over positions of KL(base || after), from log-probabilities
    (B, T, V) and position weights (B, T)."""
    kl = (base.exp() * (base - after)).sum(-1)  # (B, T)
    return (kl * weights).sum(-1) / weights.sum(-1)
