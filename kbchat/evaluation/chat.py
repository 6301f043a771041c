"""The chat mode of the benchmark (issue #12): each edit typed as a user would (`SUBJECT → FACT`,
through the parser), then asked as chat questions through the chat template, greedy.

Per case: the relation's question and two other wordings, the relation's question in lower case and
with a typo in the subject's name (`with_typo`), the dataset's rephrase asked as "Complete this
sentence", a two-turn follow-up (the subject named in the first turn, only referred to in the
second), the neighbourhood prompts and two general canaries asked before and after the edit. Single
editing reverts each edit before the next; sequential editing keeps every edit and asks afterwards.

- reliability / other wordings / rephrase / follow-up: answers that mention the new object (other
  wordings: the other questions, lower case and typo together, each also shown on its own);
- subject intact: of the answers that start to name the subject (contain its first 4 characters),
  those that name it whole; the same for the unedited model's answers, for comparison;
- fluency, two ways, edited against unedited: the share of distinct word 3-grams in each answer
  (repetition scores low; it does not grow with length), and the unedited model's per-token NLL of
  the answer, both answers to a question cut to the shorter one's tokens, the fact's own words not
  charged (the new object and the true one, wherever named: a counterfactual surprises the unedited
  model, and that is the edit, not disfluency; a mangled name or broken grammar is still charged).
  The cut matters: an answer's first tokens cost most, so a short answer's mean NLL is higher than a
  long one's however fluent. Measured twice: plain, and told: the edited answer judged with the
  judge first told its fact in serac's system message, against the unedited model's answer generated
  and judged told the true fact the same way (words that merely follow from a counterfactual,
  "located on Naples, Italy", then stop counting); and told, both sides written unquoted: the same
  judge, told each side's fact, of the answers as asked (the unedited model's plain answers). Each
  figure favours answers written as it judges them: the first told figure suits answers worded while
  reading the quoted fact, the second those worded without it, as serac's steered answers are (their
  wording model does not read the quote). NLLs are per token over all answers (the log of
  the perplexity). Shown beside them, not targeted: ROME's n-gram entropy (which grows with the
  answer's length) and the NLL of the whole answers;
- neighbours / canaries unchanged: answered exactly as before the edit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kbchat.audit.probes import load_canaries
from kbchat.audit.relations import questions, relation_of
from kbchat.errors import EditFailed
from kbchat.evaluation.answer_fluency import Fluency
from kbchat.evaluation.datasets import EditCase
from kbchat.evaluation.metrics import distinct_ngrams, keeps_fact, mentions, ngram_entropy
from kbchat.memory.active import fact_sentence, facts_message_for
from kbchat.records import Answer, EditRecord

MAX_TOKENS = 48
FOLLOW_UP = "Tell me about {}."
CANARIES_PER_CASE = 2
class ChatBenchEngine(Protocol):
    def edit(self, text: str, *, method: str | None = ..., audit: str = ...) -> EditRecord: ...

    def ask(self, text: str, *, history: Sequence[dict] = ..., memory: bool = ...,
            max_new_tokens: int | None = ...) -> Answer: ...

    def revert(self, edit_id: int) -> EditRecord: ...


@dataclass
class Tally:
    """Pass/fail lists, NLLs and plain values per figure."""

    hits: dict[str, list[bool]] = field(default_factory=dict)
    nlls: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, ok: bool) -> None:
        self.hits.setdefault(name, []).append(bool(ok))

    def add_nll(self, name: str, nll: float, tokens: int) -> None:
        if tokens:
            self.nlls.setdefault(name, []).append((nll, tokens))

    def add_value(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(float(value))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: {"rate": round(sum(v) / len(v), 3), "n": len(v)} for k, v in self.hits.items()}
        for k, v in self.nlls.items():  # per token over all answers (the log of the perplexity)
            per_token = sum(x for x, _ in v) / sum(n for _, n in v)
            out[k] = {"nll": round(per_token, 3), "perplexity": round(math.exp(per_token), 2),
                      "nll_per_answer": round(sum(x / n for x, n in v) / len(v), 3), "n": len(v)}
        for k, v in self.values.items():
            out[k] = {"mean": round(sum(v) / len(v), 3), "n": len(v)}
        return out


@dataclass(frozen=True)
class CaseQuestions:
    """What one case asks."""

    asks: list[str]  # the relation's question, then other wordings
    variants: dict[str, str]  # "lower case" / "typo": the relation's question written so
    rephrase: list[str]
    neighbours: list[str]
    canaries: list[str]
    relation: str

    @classmethod
    def of(cls, case: EditCase, canaries: Sequence[str]) -> CaseQuestions:
        req = case.request
        relation = relation_of(req)
        asks = questions(req)[:3]
        variants = {"lower case": asks[0].lower(), "typo": asks[0].replace(req.subject, with_typo(req.subject), 1)}
        return cls(asks, {k: v for k, v in variants.items() if v != asks[0]},
                   [f'Complete this sentence: "{p} ..."' for p in case.paraphrases[:1]],
                   [f'Complete this sentence: "{p} ..."' for p, _ in case.neighborhood[:2]], list(canaries),
                   relation.name if relation else "other")

    @property
    def after(self) -> list[str]:
        """Every question asked after the edit."""
        return [*self.asks, *self.variants.values(), *self.rephrase, *self.unchanged]

    @property
    def unchanged(self) -> list[str]:
        return [*self.neighbours, *self.canaries]


def with_typo(subject: str) -> str:
    """`subject` with two neighbouring letters of its longest word swapped, as near its middle as two
    different letters are ("Kuala Langat" -> "Kuala Lagnat", "Eiffel Tower" -> "Efifel Tower"): the
    slip a user makes. Unchanged when no word has four letters."""
    words = subject.split(" ")
    i = max(range(len(words)), key=lambda j: len(words[j]))
    word = words[i]
    if len(word) < 4:
        return subject
    mid = len(word) // 2
    for at in sorted(range(2, len(word)), key=lambda j: abs(j - mid)):  # swap word[at - 1], word[at]; never the first letter
        a, b = word[at - 1], word[at]
        if a != b and a.isalpha() and b.isalpha():
            words[i] = word[: at - 1] + b + a + word[at + 1 :]
            return " ".join(words)
    return subject


def edit_text(case: EditCase) -> str:
    """The edit as a user types it: `SUBJECT → the fact as a sentence`."""
    return f"{case.request.subject} → {case.request.text} {case.request.target}"


def names_subject(answer: str, subject: str) -> bool | None:
    """None when the answer does not start to name the subject; else whether it names it whole."""
    if subject[:4].casefold() not in answer.casefold():
        return None
    return subject.casefold() in answer.casefold()


def _ask_all(engine: ChatBenchEngine, qs: Sequence[str]) -> dict[str, str]:
    return {q: engine.ask(q, max_new_tokens=MAX_TOKENS).text for q in qs}


def _follow_up(engine: ChatBenchEngine, case: EditCase, ask: str) -> tuple[str, str]:
    subject = case.request.subject
    opener = FOLLOW_UP.format(subject)
    first = engine.ask(opener, max_new_tokens=MAX_TOKENS).text
    history = [{"role": "user", "content": opener}, {"role": "assistant", "content": first}]
    question = ask.replace(subject, "it")
    return question, engine.ask(question, history=history, max_new_tokens=MAX_TOKENS).text


def _score(tally: Tally, case: EditCase, qs: CaseQuestions, row: dict[str, Any], fluency: Fluency) -> None:
    """Adds one case's figures, read from its row's answers (`_row`)."""
    req = case.request
    facts = [f for f in (req.target, req.target_true) if f]  # not charged by the fluency NLL
    before, after, follow = row["before"], row["after"], row["follow_up"][1]
    tally.add("refused", "refused" in row)
    tally.add("reliability", mentions(after[qs.asks[0]], req.target))
    tally.add(f"reliability[{qs.relation}]", mentions(after[qs.asks[0]], req.target))
    for q in qs.asks[1:]:  # other wordings: the relation's other questions, then the question in lower case, with a typo
        tally.add("other_wordings", mentions(after[q], req.target))
        tally.add("other_wordings[other question]", mentions(after[q], req.target))
    for kind, q in qs.variants.items():
        tally.add("other_wordings", mentions(after[q], req.target))
        tally.add(f"other_wordings[{kind}]", mentions(after[q], req.target))
    for q in qs.rephrase:
        tally.add("rephrase", mentions(after[q], req.target))
    tally.add("follow_up", mentions(follow, req.target))
    sides = (("unedited", before), ("edited", after))
    for who, answers in sides:
        for q in qs.asks:
            whole = names_subject(answers[q], req.subject)
            if whole is not None:
                tally.add(f"subject_intact_{who}", whole)
            tally.add_value(f"entropy_{who}", ngram_entropy(answers[q]))
            tally.add_value(f"distinct3_{who}", distinct_ngrams(answers[q]))
            whole_nll = fluency(q, answers[q], facts, None)
            tally.add_nll(f"nll_whole_{who}", whole_nll.nll, whole_nll.tokens)
    _score_nll(tally, "nll", qs.asks, dict(sides), fluency, facts)
    if "before_told" in row:  # the baseline told the true fact, as the edited answer was told the new one
        _score_nll(tally, "nll_told", qs.asks, {"unedited": row["before_told"], "edited": after}, fluency, facts,
                   told_facts(case))
    _score_nll(tally, "nll_told_unquoted", qs.asks, dict(sides), fluency, facts, told_facts(case))
    truths = {c.question: c.answer for c in load_canaries().fixed}  # the canaries' answers; a neighbour's is target_true
    for q in qs.neighbours:
        tally.add("neighbours_unchanged", after[q] == before[q])
        if req.target_true:
            tally.add("neighbours_same_fact", keeps_fact(before[q], after[q], req.target_true, req.target))
    for q in qs.canaries:
        tally.add("canaries_unchanged", after[q] == before[q])
        tally.add("canaries_same_fact", keeps_fact(before[q], after[q], truths[q], req.target))


def _score_nll(tally: Tally, name: str, asks: Sequence[str], sides: dict[str, dict[str, str]],
               fluency: Fluency, facts: Sequence[str], told: dict[str, str] | None = None) -> None:
    """Per question, the unedited model's NLL of both sides' answers cut to the shorter one's tokens
    (tallied as `{name}_{side}`), the judge first reading `told[side]` as a system message when given."""
    context = told or {}
    for q in asks:
        shorter = min(fluency(q, answers[q], facts, 0).length for answers in sides.values())  # limit 0: length only
        for who, answers in sides.items():
            cut = fluency(q, answers[q], facts, shorter, context=context.get(who))
            tally.add_nll(f"{name}_{who}", cut.nll, cut.tokens)


def told_facts(case: EditCase) -> dict[str, str]:
    """The system message each side's told fluency figure is generated and judged with: serac's own
    message quoting the edit's fact (edited), and the same message quoting the true fact (unedited)."""
    req = case.request
    return {"edited": facts_message_for([fact_sentence(req.text, req.target)])["content"],
            "unedited": facts_message_for([fact_sentence(req.text, req.target_true)])["content"]}


def _row(case: EditCase, record: EditRecord | None, qs: CaseQuestions, before: dict[str, str],
         after: dict[str, str], follow: tuple[str, str], refused: str | None = None) -> dict[str, Any]:
    """One case's answers; `refused`: the method's reason when it refused the edit (no record)."""
    row = {"case": case.case_id, "edit": edit_text(case), "relation": qs.relation,
           "parsed": [record.prompt, record.target] if record is not None else None,
           "before": before, "after": after, "follow_up": list(follow)}
    return row | {"refused": refused} if refused else row


@dataclass
class UneditedAnswers:
    """The unedited model's answers, each asked once: `plain` by question, `told` (the told fluency
    baseline, `_told_unedited`) by case id, then question. Shared by the runs on one model: several
    methods in a process, or an earlier run's rows (`learn`). Greedy decoding with no edit active
    gives the same text whichever case, method or process asks."""

    plain: dict[str, str] = field(default_factory=dict)
    told: dict[str, dict[str, str]] = field(default_factory=dict)

    def learn(self, row: dict[str, Any]) -> None:
        """Keep the unedited answers of a per-case row of a run (this one or an earlier one)."""
        self.plain.update(row["before"])
        self.told.setdefault(row["case"], {}).update(row.get("before_told", {}))


def _canary_questions(count: int) -> list[list[str]]:
    """CANARIES_PER_CASE general canary questions per case, rotating through the shipped set."""
    fixed = [f.question for f in load_canaries().fixed]
    return [[fixed[(i * CANARIES_PER_CASE + j) % len(fixed)] for j in range(CANARIES_PER_CASE)]
            for i in range(count)]


def _unedited(engine: ChatBenchEngine, qs: Sequence[str], answered: UneditedAnswers) -> dict[str, str]:
    """The answers to `qs` with no edit active, asking only those `answered` does not hold yet (and
    adding them to it). Single editing reverts each edit exactly, so the unedited answer to a question
    is the same whichever case or method asks it."""
    answered.plain.update(_ask_all(engine, [q for q in dict.fromkeys(qs) if q not in answered.plain]))
    return {q: answered.plain[q] for q in qs}


def _told_unedited(engine: ChatBenchEngine, case: EditCase, asks: Sequence[str],
                   answered: UneditedAnswers) -> dict[str, str]:
    """The unedited model's answers to `asks` told the true fact the way serac tells an edit's
    (`told_facts`): the baseline of the told fluency figure. Asked with no edit active, only those
    `answered` does not hold for this case yet (and added to it)."""
    system = {"role": "system", "content": told_facts(case)["unedited"]}
    known = answered.told.setdefault(case.case_id, {})
    known.update({q: engine.ask(q, history=[system], max_new_tokens=MAX_TOKENS).text
                  for q in dict.fromkeys(asks) if q not in known})
    return {q: known[q] for q in asks}


def _single_case(engine: ChatBenchEngine, case: EditCase, qs: CaseQuestions, method: str,
                 answered: UneditedAnswers) -> dict[str, Any]:
    """One case of single editing: unedited answers, the edit, the answers after it, the revert."""
    before = _unedited(engine, [*qs.asks, *qs.unchanged], answered)
    before_told = _told_unedited(engine, case, qs.asks, answered)
    record, refused = _edit(engine, case, method)
    try:
        after = _ask_all(engine, qs.after)
        follow = _follow_up(engine, case, qs.asks[0])
    finally:
        if record is not None:
            engine.revert(record.id)
    return _row(case, record, qs, before, after, follow, refused) | {"before_told": before_told}


def _edit(engine: ChatBenchEngine, case: EditCase, method: str) -> tuple[EditRecord | None, str | None]:
    """(the edit made, None), or (None, why) when the method refused it (EditFailed: nothing changed).
    A refused case is still asked and scored, as the unedited model answers: a refusal is a miss."""
    try:
        return engine.edit(edit_text(case), method=method, audit="off"), None
    except EditFailed as exc:
        return None, str(exc)


def _sequential_rows(engine: ChatBenchEngine, cases: Sequence[EditCase], plans: Sequence[CaseQuestions],
                     method: str, answered: UneditedAnswers, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """All edits made, then every case asked; every edit reverted at the end."""
    befores = [_unedited(engine, [*qs.asks, *qs.unchanged], answered) for qs in plans]
    befores_told = [_told_unedited(engine, case, qs.asks, answered) for case, qs in zip(cases, plans, strict=True)]
    made: list[tuple[EditRecord | None, str | None]] = []
    rows = []
    try:
        for i, case in enumerate(cases, 1):
            made.append(_edit(engine, case, method))
            log(f"edit {i}/{len(cases)} {case.request.subject}" + (" refused" if made[-1][1] else ""))
        for case, qs, before, told, (record, refused) in zip(cases, plans, befores, befores_told, made, strict=True):
            after = _ask_all(engine, qs.after)
            rows.append(_row(case, record, qs, before, after, _follow_up(engine, case, qs.asks[0]), refused)
                        | {"before_told": told})
    finally:
        for record, _ in reversed(made):
            if record is not None:
                engine.revert(record.id)
    return rows


def run_chat_bench(engine: ChatBenchEngine, cases: Sequence[EditCase], method: str, fluency: Fluency,
                   log: Callable[[str], None] = lambda _: None, sequential: bool = False,
                   partial: Callable[[dict[str, Any]], None] = lambda _: None,
                   done: Sequence[dict[str, Any]] = (), answered: UneditedAnswers | None = None,
                   shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Every case: single editing (each edit reverted before the next) or sequential (all edits made,
    then every case asked; reverted at the end). `partial(result so far)` is called after each case of
    single editing, so a long run that is stopped keeps what it measured.

    Resuming single editing: `done` holds per-case rows of an earlier run of the same cases and
    method; those cases are scored again from their rows, not asked again. `answered` holds unedited
    answers, shared by runs on one model (several methods, earlier runs) and filled here. With
    `shard=(k, n)` only the cases whose 0-based position is k modulo n are asked (the others only if
    `done` holds them), so n processes can share a long run; their rows merge through `done`."""
    answered = UneditedAnswers() if answered is None else answered
    plans = [CaseQuestions.of(c, canaries) for c, canaries in zip(cases, _canary_questions(len(cases)), strict=True)]
    tally = Tally()
    if sequential:
        rows = _sequential_rows(engine, cases, plans, method, answered, log)
        for case, qs, row in zip(cases, plans, rows, strict=True):
            _score(tally, case, qs, row, fluency)
        return _result(method, True, rows, tally)
    known = {row["case"]: row for row in done}
    rows: list[dict[str, Any]] = []
    for i, (case, qs) in enumerate(zip(cases, plans, strict=True), 1):
        row = known.get(case.case_id)
        if row is None or not _answers_all(row, qs):
            if (i - 1) % shard[1] != shard[0]:
                continue
            row = _single_case(engine, case, qs, method, answered)
            log(f"{i}/{len(cases)} {case.request.subject}: {row['after'][qs.asks[0]][:80]!r}")
        else:  # resumed: its unedited answers serve later cases and methods too
            answered.learn(row)
            if "before_told" not in row:  # a run from before the told figure: its baseline asked now
                row = row | {"before_told": _told_unedited(engine, case, qs.asks, answered)}
        _score(tally, case, qs, row, fluency)
        rows.append(row)
        partial(_result(method, False, rows, tally))
    return _result(method, False, rows, tally)


def _answers_all(row: dict[str, Any], qs: CaseQuestions) -> bool:
    """Whether an earlier run's row holds an answer to every question this case asks now."""
    return set([*qs.asks, *qs.unchanged]) <= set(row["before"]) and \
        set(qs.after) <= set(row["after"])


def _result(method: str, sequential: bool, rows: list[dict[str, Any]], tally: Tally) -> dict[str, Any]:
    return {"method": method, "cases": len(rows), "sequential": sequential, "figures": tally.summary(),
            "per_case": list(rows)}
