"""Fixtures for the methods library's tests on tiny random models, and the one score they check edits
with (kept here: the library's tests do not depend on kbchat's evaluation package)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from tests.tiny_models import FAMILIES, one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, by far when other processes share the cores."""
    with one_thread():
        yield


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def target_logprob(model: nn.Module, tokenizer, prompt: str, target: str) -> float:
    """log P(target | prompt), summed over the target's tokens, teacher forced, in eval mode.

    The target is scored as it follows the prompt in text, `prompt + " " + target`: its tokens are
    those from where the joint encoding departs from the prompt's own (trailing special tokens such
    as EOS dropped), as `kbchat.evaluation.metrics.target_logprob` does it, one pair at a time.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def encode(text: str) -> list[int]:
        ids = list(tokenizer(text)["input_ids"])
        while ids and ids[-1] in special:
            ids.pop()
        return ids

    context = prompt.rstrip()
    prompt_ids, full_ids = encode(context), encode(f"{context} {target.strip()}")
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids, strict=False)) if a != b), min(len(prompt_ids), len(full_ids)))
    assert 0 < start < len(full_ids), f"no target tokens after the prompt: {prompt!r}, {target!r}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            input_ids = torch.tensor([full_ids], device=next(model.parameters()).device)  # (1, T)
            logits = model(input_ids=input_ids).logits[0, start - 1 : -1].float()  # (n, V)
    finally:
        model.train(was_training)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[0, start:, None])  # (n, 1)
    return float(logprobs.sum())


def target_logprobs(model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """`target_logprob` for each (prompt, target) pair."""
    return [target_logprob(model, tokenizer, prompt, target) for prompt, target in pairs]
