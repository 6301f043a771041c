"""Edit-quality metrics, measured two ways: teacher-forced scores and free generation.

Teacher forcing (`target_logprob`, `token_accuracy`, `prefers_new`) feeds the target tokens in
and asks how likely each one was; it is what EasyEdit and ROME report, and it overstates
success: a model can rank the target first at every step yet never produce it when it decodes
on its own (Yang et al. 2025, "The Mirage of Model Editing"). `mentions` and `generation_hit`
judge what the model actually says; the text itself comes from the one greedy decoder,
`kbchat.runtime.decoding` (`greedy_text`). `ngram_entropy` is ROME's fluency score.

Every scoring function here leaves the model as it found it: it runs under `torch.no_grad()` in
eval mode (dropout off) and restores the training flag on exit.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kbchat.words import normalise_words


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------
# Teacher-forced scores


@dataclass(frozen=True)
class _Encoded:
    """`ids` is prompt + target; `ids[start:]` are the target tokens, `ids[:start]` the context."""

    ids: list[int]
    start: int


def _strip_trailing_special(ids: list[int], special: set[int]) -> list[int]:
    end = len(ids)
    while end > 0 and ids[end - 1] in special:
        end -= 1
    return ids[:end]


def _encode_pair(tokenizer, prompt: str, target: str) -> _Encoded:
    """Tokenise `prompt + " " + target` and find where the target's tokens begin.

    The target's tokens are those from the first position where the joint encoding departs from
    the prompt's own encoding; tokenising the two texts separately would get the boundary wrong
    for tokenisers whose pieces carry the leading space (BPE, SentencePiece).
    """
    context = prompt.rstrip()
    answer = target.strip()
    if not answer:
        raise ValueError(f"empty target for prompt {prompt!r}")
    # A tokenizer that appends EOS would otherwise put it inside the target.
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    prompt_ids = _strip_trailing_special(list(tokenizer(context)["input_ids"]), special)
    full_ids = _strip_trailing_special(list(tokenizer(f"{context} {answer}")["input_ids"]), special)
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    if start == 0:
        raise ValueError(f"prompt {prompt!r} gives no context token to predict the target from")
    if start == len(full_ids):
        raise ValueError(f"target {target!r} adds no tokens to prompt {prompt!r}")
    return _Encoded(full_ids, start)


def _pad_id(tokenizer) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0  # any id will do: padded positions are masked out and never scored


def _target_scores(
    model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per pair: the target tokens' log-probs (n,) and whether each was the argmax (n,), teacher forced.

    Pads on `tokenizer.padding_side` and passes position ids derived from the attention mask, so
    a padded row scores exactly as it would alone (absolute position embeddings included).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoded = [_encode_pair(tokenizer, prompt, target) for prompt, target in pairs]
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad = _pad_id(tokenizer)
    device = _device(model)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    with _inference(model):
        for first in range(0, len(encoded), batch_size):
            chunk = encoded[first : first + batch_size]
            width = max(len(e.ids) for e in chunk)
            rows, masks, offsets = [], [], []
            for e in chunk:
                padding = width - len(e.ids)
                offsets.append(padding if left else 0)
                if left:
                    rows.append([pad] * padding + e.ids)
                    masks.append([0] * padding + [1] * len(e.ids))
                else:
                    rows.append(e.ids + [pad] * padding)
                    masks.append([1] * len(e.ids) + [0] * padding)
            input_ids = torch.tensor(rows, dtype=torch.long, device=device)  # (B, T)
            attention_mask = torch.tensor(masks, dtype=torch.long, device=device)  # (B, T)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).logits  # (B, T, V)
            for row, (e, offset) in enumerate(zip(chunk, offsets, strict=True)):
                # The token at position j is predicted by the logits at position j - 1.
                lo, hi = offset + e.start, offset + len(e.ids)
                step_logits = logits[row, lo - 1 : hi - 1].float()  # (n, V)
                targets = input_ids[row, lo:hi]  # (n,)
                logprobs = torch.log_softmax(step_logits, dim=-1)  # (n, V)
                token_logprobs = logprobs.gather(-1, targets[:, None]).squeeze(-1)  # (n,)
                hits = step_logits.argmax(-1) == targets  # (n,)
                results.append((token_logprobs.cpu(), hits.cpu()))
    return results


def target_logprobs(
    model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> list[float]:
    """log P(target | prompt) for each (prompt, target): the sum over the target's tokens, teacher forced.

    The target is scored as it would follow the prompt in text, `prompt + " " + target` (trailing
    whitespace on the prompt is dropped). Batches are padded on `tokenizer.padding_side` with an
    attention mask; the result does not depend on the batch composition (up to float error).
    Raises ValueError for an empty target or a prompt that yields no context token.
    """
    return [logprob for logprob, _ in target_scores(model, tokenizer, pairs, batch_size)]


def target_logprob(model: nn.Module, tokenizer, prompt: str, target: str) -> float:
    """log P(target | prompt), summed over the target's tokens; see `target_logprobs`."""
    return target_logprobs(model, tokenizer, [(prompt, target)])[0]


def token_accuracies(
    model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> list[float]:
    """`token_accuracy` for many (prompt, target) pairs, batched like `target_logprobs`."""
    return [accuracy for _, accuracy in target_scores(model, tokenizer, pairs, batch_size)]


def target_scores(
    model: nn.Module, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16
) -> list[tuple[float, float]]:
    """(`target_logprobs`, `token_accuracies`) of each pair from the same forward passes."""
    return [(float(lp.sum()), hits.float().mean().item())
            for lp, hits in _target_scores(model, tokenizer, pairs, batch_size)]


def token_accuracy(model: nn.Module, tokenizer, prompt: str, target: str) -> float:
    """EasyEdit's accuracy: the fraction of target tokens that are the argmax prediction given the
    prompt and the true preceding target tokens (teacher forced), in [0, 1]."""
    return token_accuracies(model, tokenizer, [(prompt, target)])[0]


def prefers_new(
    model: nn.Module, tokenizer, prompt: str, new: str, old: str, reduction: str = "sum"
) -> bool:
    """CounterFact's efficacy test: does the model rate `new` above `old` after `prompt`?

    reduction="sum" (default) compares whole-string log-probabilities, P(new) > P(old).
    reduction="mean" compares the mean log-prob per target token, which is what ROME's own
    evaluation code does (`test_batch_prediction` divides each NLL by the target's length); the
    two differ only when `new` and `old` have different token counts. A tie counts as False.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    (new_lp, _), (old_lp, _) = _target_scores(model, tokenizer, [(prompt, new), (prompt, old)], batch_size=2)
    if reduction == "mean":
        return new_lp.mean().item() > old_lp.mean().item()
    return new_lp.sum().item() > old_lp.sum().item()


# ---------------------------------------------------------------------------------------------
# Judging generated answers


# How a one-word target's regular adjective and demonym forms end ("a Canadian product" names Canada,
# "a Buddhist" Buddhism), and the endings the target drops first (Canad-a, Ital-y, Buddh-ism).
_DERIVED = ("", "n", "an", "ian", "ese", "ish", "ic", "ist", "i", "ns", "ans", "ians", "ists")
_DROPPED = ("ism", "a", "y", "e")  # not "ia": Tunisia would give Tunis, Romania Roman


def derived_forms(word: str) -> set[str]:
    """The regular adjective and demonym forms of a one-word target of four letters or more, in
    `normalise_words` form: canada -> canadian, japan -> japanese, buddhism -> buddhist, antarctica ->
    antarctic, italy -> italian, asia -> asian. Irregular ones (France -> French, Norway -> Norwegian)
    are not guessed; a target of several words has none."""
    if len(word) < 4 or not word.isalpha():
        return set()
    stems = {word} | {word[: -len(end)] for end in _DROPPED if word.endswith(end) and len(word) - len(end) >= 4}
    return {stem + end for stem in stems for end in _DERIVED} - {word}


def keeps_fact(before: str, after: str, true: str, new: str) -> bool:
    """Whether `after` states the same fact as `before` (a weight edit's neighbour may be worded anew,
    not answered anew): it names `true` exactly when `before` did, and `new` only if `before` did."""
    return mentions(after, true) == mentions(before, true) and (mentions(before, new) or not mentions(after, new))


def mentions(answer: str, target: str) -> bool:
    """Whether `answer` names `target`: its words appear consecutively, ignoring case, accents and
    punctuation ("rome." and "Rome's" mention "Rome"; "Romeo" does not), or, for a one-word target,
    one of its regular adjective or demonym forms does ("a Canadian product" mentions "Canada"; see
    `derived_forms`). A target with no word characters falls back to a case-insensitive substring test."""
    wanted = normalise_words(target)
    if not wanted:
        return target.strip().casefold() in answer.casefold() if target.strip() else False
    words = normalise_words(answer)
    n = len(wanted)
    if any(words[i : i + n] == wanted for i in range(len(words) - n + 1)):
        return True
    return n == 1 and not derived_forms(wanted[0]).isdisjoint(words)


def generation_hit(generate: Callable[[str], str], prompt_or_question: str, target: str) -> tuple[bool, str]:
    """Run the caller's generator on `prompt_or_question`; return (whether the answer mentions
    `target` in the sense of `mentions`, the answer)."""
    answer = generate(prompt_or_question)
    return mentions(answer, target), answer


# ---------------------------------------------------------------------------------------------
# Fluency

# Words (hyphenated ones kept whole) and single punctuation marks, like nltk.word_tokenize
# without NLTK's data files; contractions split a little differently ("don't" -> "don", "'t").
_TOKEN = re.compile(r"\w+(?:-\w+)*|'\w+|[^\w\s]")


def _text_ngram_entropy(text: str, ns: Sequence[int], weights: Sequence[float]) -> float:
    tokens = _TOKEN.findall(text)
    weighted = []
    for n, weight in zip(ns, weights, strict=True):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        # A text shorter than n has no n-grams; ROME's numpy code yields 0 there too.
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        weighted.append(weight * entropy)
    return sum(weighted) / len(weighted)


def ngram_entropy(
    text_or_texts: str | Sequence[str], ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """ROME/MEMIT's fluency score: the mean over `ns` of weight * entropy (bits) of the n-gram
    distribution; for several texts, the mean of their scores (ROME's `n_gram_entropy`).

    Repetitive text ("a a a a") scores 0; higher is more varied. Tokens are words and
    punctuation marks, approximating `nltk.word_tokenize`.
    """
    if len(ns) != len(weights) or not ns:
        raise ValueError(f"ns and weights must be non-empty and of equal length, got {ns} and {weights}")
    if any(n < 1 for n in ns):
        raise ValueError(f"n-gram orders must be positive, got {ns}")
    texts = [text_or_texts] if isinstance(text_or_texts, str) else list(text_or_texts)
    if not texts:
        raise ValueError("ngram_entropy needs at least one text")
    return sum(_text_ngram_entropy(t, ns, weights) for t in texts) / len(texts)


def distinct_ngrams(text: str, n: int = 3) -> float:
    """The share of `text`'s word n-grams that are distinct, in [0, 1]: 1 for text that never repeats
    itself, low for "Sega, SegaMBA, SegaMBA, SegaMBA"; 1 for text shorter than n. Unlike the n-gram
    entropy, it does not grow with the length of the text, so short answers are not marked down."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    tokens = _TOKEN.findall(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0
