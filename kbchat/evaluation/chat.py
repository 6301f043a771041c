"""The chat mode of the benchmark (issue #12): each edit typed as a user would (`SUBJECT → FACT`,
through the parser), then asked as chat questions through the chat template, greedy.

Per case: the relation's question and two other wordings, the dataset's rephrase asked as "Complete
this sentence", a two-turn follow-up (the subject named in the first turn, only referred to in the
second), and the neighbourhood prompts asked before and after the edit. Reported per case and in all:

- reliability / other wordings / rephrase / follow-up: answers that mention the new object;
- subject intact: of the answers that start to name the subject (contain its first 4 characters),
  those that name it whole; the same for the unedited model's answers, for comparison;
- fluency: the unedited model's mean per-token NLL of the edited answers (and of its own answers);
- neighbours unchanged: neighbourhood questions answered exactly as before the edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kbchat.audit.relations import questions
from kbchat.evaluation.datasets import EditCase
from kbchat.evaluation.metrics import mentions
from kbchat.records import Answer, EditRecord

MAX_TOKENS = 48
FOLLOW_UP = "Tell me about {}."


class ChatBenchEngine(Protocol):
    def edit(self, text: str, *, method: str | None = ..., audit: str = ...) -> EditRecord: ...

    def ask(self, text: str, *, history: Sequence[dict] = ..., memory: bool = ...,
            max_new_tokens: int | None = ...) -> Answer: ...

    def revert(self, edit_id: int) -> EditRecord: ...


@dataclass
class Tally:
    """Pass/fail lists and NLLs per figure."""

    hits: dict[str, list[bool]] = field(default_factory=dict)
    nlls: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def add(self, name: str, ok: bool) -> None:
        self.hits.setdefault(name, []).append(bool(ok))

    def add_nll(self, name: str, nll: float, tokens: int) -> None:
        if tokens:
            self.nlls.setdefault(name, []).append((nll, tokens))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: {"rate": round(sum(v) / len(v), 3), "n": len(v)} for k, v in self.hits.items()}
        for k, v in self.nlls.items():
            per_answer = [nll / n for nll, n in v]
            out[k] = {"nll": round(sum(per_answer) / len(per_answer), 3),
                      "perplexity": round(math.exp(sum(x for x, _ in v) / sum(n for _, n in v)), 2), "n": len(v)}
        return out


def edit_text(case: EditCase) -> str:
    """The edit as a user types it: `SUBJECT → the fact as a sentence`."""
    return f"{case.request.subject} → {case.request.text} {case.request.target}"


def names_subject(answer: str, subject: str) -> bool | None:
    """None when the answer does not start to name the subject; else whether it names it whole."""
    if subject[:4].casefold() not in answer.casefold():
        return None
    return subject.casefold() in answer.casefold()


def run_case(engine: ChatBenchEngine, case: EditCase, method: str, tally: Tally,
             fluency: Callable[[str, str], tuple[float, int]]) -> dict[str, Any]:
    """Edit, ask, revert one case; adds to `tally`; returns the case's answers."""
    req = case.request
    asks = questions(req)[:3]
    rephrase = [f'Complete this sentence: "{p} ..."' for p in case.paraphrases[:1]]
    neighbours = [f'Complete this sentence: "{p} ..."' for p, _ in case.neighborhood[:2]]
    before = {q: engine.ask(q, max_new_tokens=MAX_TOKENS).text for q in [*asks, *neighbours]}
    for q in asks:
        _score_subject(tally, "unedited", before[q], req.subject, q, fluency)
    record = engine.edit(edit_text(case), method=method, audit="off")
    try:
        after = {q: engine.ask(q, max_new_tokens=MAX_TOKENS).text for q in [*asks, *rephrase, *neighbours]}
        opener = FOLLOW_UP.format(req.subject)
        first = engine.ask(opener, max_new_tokens=MAX_TOKENS).text
        history = [{"role": "user", "content": opener}, {"role": "assistant", "content": first}]
        follow_q = asks[0].replace(req.subject, "it")
        follow = engine.ask(follow_q, history=history, max_new_tokens=MAX_TOKENS).text
    finally:
        engine.revert(record.id)
    tally.add("reliability", mentions(after[asks[0]], req.target))
    for q in asks[1:]:
        tally.add("other_wordings", mentions(after[q], req.target))
    for q in rephrase:
        tally.add("rephrase", mentions(after[q], req.target))
    tally.add("follow_up", mentions(follow, req.target))
    for q in asks:
        _score_subject(tally, "edited", after[q], req.subject, q, fluency)
    for q in neighbours:
        tally.add("neighbours_unchanged", after[q] == before[q])
    return {"case": case.case_id, "edit": edit_text(case), "parsed": [record.prompt, record.target],
            "before": before, "after": after, "follow_up": [follow_q, follow]}


def _score_subject(tally: Tally, who: str, answer: str, subject: str, question: str,
                   fluency: Callable[[str, str], tuple[float, int]]) -> None:
    whole = names_subject(answer, subject)
    if whole is not None:
        tally.add(f"subject_intact_{who}", whole)
    tally.add_nll(f"fluency_{who}", *fluency(question, answer))


def run_chat_bench(engine: ChatBenchEngine, cases: Sequence[EditCase], method: str,
                   fluency: Callable[[str, str], tuple[float, int]],
                   log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every case in turn (single editing: each edit reverted before the next)."""
    tally = Tally()
    rows = []
    for i, case in enumerate(cases, 1):
        rows.append(run_case(engine, case, method, tally, fluency))
        log(f"{i}/{len(cases)} {case.request.subject}: {rows[-1]['after'][questions(case.request)[0]][:80]!r}")
    return {"method": method, "cases": len(cases), "figures": tally.summary(), "per_case": rows}
