"""Token-level helpers shared by the methods: a leading BOS where the tokenizer adds one, right padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def leading_bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer starts every text with it (Gemma, Llama 2 and 3), else [].

    The model was trained, and answers, with it: Gemma 3 270M's hidden states at the subject differ so
    much without it that a ROME edit computed on BOS-less texts reached its raw prompts (NLL 0.05) but
    not one chat answer; with it, the same edit moved the answer. Tokenizers that add no BOS (GPT-2's,
    SmolLM2's, the tests' tiny ones) are unaffected.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []

def right_padded(tokenizer, rows: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (B, T): `rows` right-padded to the longest."""
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(list(r))
        mask[i, : len(r)] = 1
    return input_ids.to(device), mask.to(device)


def subject_last_tokens(tokenizer, text: str, subject: str) -> tuple[int, ...]:
    """Token index of the last token of every occurrence of `subject` in `text`."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    offsets = enc["offset_mapping"]
    found = []
    start = text.find(subject)
    while start != -1:
        end = start + len(subject)
        overlapping = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        if overlapping:
            found.append(max(overlapping))
        start = text.find(subject, end)
    if not found:
        raise ValueError(f"subject {subject!r} not found in {text!r}")
    return tuple(sorted(set(found)))
