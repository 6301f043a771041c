"""The model's own answer, kept by a KL term while an edit's value is optimised (issue #12's direction).

An in-model patch that makes a chat answer state the new fact also changes how the rest of that answer
reads: the value is pushed until the target is likely, and nothing asks the words around it to stay.
Given the unedited model's answer to a question about the subject, the value optimisation adds
KL(unedited || edited) of the next-token distributions over that answer, teacher-forced, at every
position except those that predict the replaced fact's own words (they must change). The delta is added
only at the subject's occurrences in the question, as an in-scope patch acts on the input alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.tokens import leading_bos, right_padded, subject_last_tokens


@dataclass(frozen=True)
class OwnAnswer:
    """`prompt`: the question as the model reads it, ending where the answer begins (chat-formatted);
    `answer`: what the unedited model answered; `fact`: the words of it that the edit replaces (the old
    object; None or absent from the answer: every position is kept)."""

    prompt: str
    answer: str
    fact: str | None = None


@dataclass(frozen=True)
class AnswerRows:
    """Token rows of own answers (right-padded), with the subject's positions in the question only."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    subject_positions: tuple[tuple[int, ...], ...]  # where the delta is added
    kept: tuple[tuple[int, ...], ...]  # per row: positions whose next-token distribution is kept


def fact_chars(answer: str, fact: str | None) -> list[tuple[int, int]]:
    """Character spans of every occurrence of `fact` in `answer` (case-insensitive)."""
    if not fact or not fact.strip():
        return []
    low, needle = answer.lower(), fact.strip().lower()
    spans, start = [], low.find(needle)
    while start != -1:
        spans.append((start, start + len(needle)))
        start = low.find(needle, start + len(needle))
    return spans


def answer_rows(tokenizer, answers: Sequence[OwnAnswer], subject: str, device) -> AnswerRows:
    """Each prompt + answer tokenised together; kept = the positions predicting answer tokens that do not
    overlap the fact. Raises ValueError when a prompt does not name the subject."""
    rows, subjects, kept = [], [], []
    bos = leading_bos(tokenizer)
    for own in answers:
        text = own.prompt + own.answer
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        lead = bos if ids[:1] != bos else []
        spans = fact_chars(own.answer, own.fact)
        start = len(own.prompt)
        positions = []
        for i, (a, b) in enumerate(offsets):
            if i == 0 or b <= start:
                continue  # a question token: not part of the answer
            in_fact = any(a - start < e and b - start > s for s, e in spans)
            if not in_fact:
                positions.append(i - 1 + len(lead))  # logits at p predict token p + 1
        subjects.append(tuple(p + len(lead) for p in subject_last_tokens(tokenizer, own.prompt, subject)))
        kept.append(tuple(positions))
        rows.append(lead + ids)
    input_ids, mask = right_padded(tokenizer, rows, device)
    return AnswerRows(input_ids, mask, tuple(subjects), tuple(kept))


def kept_logprobs(head: torch.nn.Module, hidden: torch.Tensor, kept: Sequence[Sequence[int]]) -> torch.Tensor:
    """(n_kept, V) log-probabilities at the kept positions, from final hidden states (B, T, d)."""
    rows = [hidden[b, list(pos)] for b, pos in enumerate(kept) if pos]
    return F.log_softmax(head(torch.cat(rows)).float(), -1)


def answer_kl(edited: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Mean over kept positions of KL(base || edited); both (n_kept, V) log-probabilities."""
    return F.kl_div(edited, base, log_target=True, reduction="batchmean")
