"""How fluent a chat answer reads to the unedited model: its per-token NLL, the fact's own words not
charged (a counterfactual surprises the unedited model by design; that is the edit, not disfluency),
optionally cut to a number of tokens and with the judge first told a fact (kbchat.evaluation.chat)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kbchat.evaluation.metrics import target_logprobs

# (question, answer, facts, limit, context=None) -> the answer's NLL, its first `limit` tokens only
# (None: all), the judge first told `context` when given
Fluency = Callable[..., "AnswerNLL"]


@dataclass(frozen=True)
class AnswerNLL:
    """An answer's summed NLL over the tokens scored (facts' tokens left out), and its full length."""

    nll: float
    tokens: int  # scored: within the limit, facts' tokens left out
    length: int  # the whole answer's tokens


def fact_spans(answer: str, facts: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) of every whole-word occurrence of each fact in `answer`, ignoring case, in order,
    overlaps dropped (the earlier, then longer, span kept)."""
    found = sorted({(m.start(), m.end()) for fact in facts if fact.strip()
                    for m in re.finditer(rf"(?<!\w){re.escape(fact.strip())}(?!\w)", answer, re.IGNORECASE)},
                   key=lambda span: (span[0], -span[1]))
    spans: list[tuple[int, int]] = []
    for start, end in found:
        if not spans or start >= spans[-1][1]:
            spans.append((start, end))
    return spans


def answer_nll(runtime) -> Fluency:
    """fluency(question, answer, facts, limit) -> `AnswerNLL` of the answer (its first `limit` tokens
    when given) under `runtime`'s unpatched model (a `kbchat.runtime.ModelRuntime`; in-scope patches
    are not switched on), the tokens of `facts`' occurrences (`fact_spans`) left out: by the chain
    rule, the answer's NLL minus each occurrence's NLL given the prompt and the answer before it. With
    `context`, the judge reads it first as a system message (e.g. the fact the answer assumes)."""
    from kbchat.runtime.decoding import chat_text

    tokenizer = runtime.loaded.tokenizer

    def ids(text: str) -> list[int]:
        return tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]

    def fluency(question: str, answer: str, facts: Sequence[str] = (), limit: int | None = None,
                context: str | None = None) -> AnswerNLL:
        if not answer.strip():
            return AnswerNLL(0.0, 0, 0)
        answer_ids = ids(answer)
        length = len(answer_ids)
        if limit is not None and limit < length:
            answer = tokenizer.decode(answer_ids[:limit]).strip() if limit > 0 else ""
            if not answer:
                return AnswerNLL(0.0, 0, length)
            answer_ids = ids(answer)
        told = [{"role": "system", "content": context}] if context else []
        prompt = chat_text(tokenizer, [*told, {"role": "user", "content": question}])
        spans = fact_spans(answer, facts)
        pairs = [(prompt, answer)] + [((prompt + " " + answer[:start]).rstrip(), answer[start:end])
                                      for start, end in spans]
        whole, *parts = runtime.score(target_logprobs, pairs)
        tokens = len(answer_ids) - sum(len(ids(answer[start:end])) for start, end in spans)
        return AnswerNLL(-(whole - sum(parts)), tokens, length)

    return fluency
