"""The checks every edit must pass: what to probe, and how answers before and after it are judged.

An audit is pure logic over an `EditView`, which the facade implements: it answers a probe as the
system was before the edit (`edited=False`) and with it (`edited=True`), by real generation and by
teacher forcing. `plan_probes` chooses the probes for a chat edit (templates, canaries, the user's
own probes); the benchmark runner builds them from a dataset instead. `run_checks` turns probes
into `CheckRecord`s, each probe measured two ways:

- teacher forced: log P(expected | prompt) and EasyEdit's token accuracy, with P(old) beside it when
  the replaced answer is known;
- generation: what the system actually says (a raw greedy continuation for a prompt, a chat answer
  for a question), and whether it names the expected answer (`methods.evaluation.mentions`).

Teacher forcing overstates success (Yang et al. 2025, "The Mirage of Model Editing"), which is why
both are kept side by side.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

from kbchat.records import CheckRecord
from methods.evaluation import mentions, ngram_entropy
from methods.requests import EditRequest
from methods.templates import paraphrases as template_paraphrases
from methods.templates import questions, relation_of

RELIABILITY = "reliability"
GENERALIZATION = "generalization"
LOCALITY = "locality"
PORTABILITY = "portability"
FLUENCY = "fluency"
METRICS = (RELIABILITY, GENERALIZATION, LOCALITY, PORTABILITY, FLUENCY)

TEACHER_FORCED = "teacher_forced"
GENERATION = "generation"
MODES = (TEACHER_FORCED, GENERATION)

PROMPT = "prompt"  # continued as raw text (`EditView.complete`)
QUESTION = "question"  # answered through the chat template (`EditView.generate`)

# A locality probe keeps its answer when log P(expected) moves by less than this (in nats: a
# factor of e), or when the expected answer is the argmax at every token both before and after.
LOCALITY_TOLERANCE = 1.0
# Fluency passes when the n-gram entropy after the edit is at least this share of the one before.
FLUENCY_RATIO = 0.9
FLUENCY_PROMPT = "Tell me about {}."
NEIGHBOURS = 2
PARAPHRASES = 2

_ARROWS = re.compile(r"\s*(?:→|->|=>)\s*")
_ENTROPY = re.compile(r"^entropy (-?\d+(?:\.\d+)?): ")


@runtime_checkable
class EditView(Protocol):
    """One edit as the audit sees it; implemented by the facade.

    `edited=False` answers as the system was before this edit, `edited=True` with it. Answers are
    greedy and deterministic; `generate` goes through the chat template and whatever memory or
    retrieval path the real app uses, `complete` continues a raw prompt. `logprobs` returns the
    summed log P(target | prompt), teacher forced, and `token_accuracies` EasyEdit's token accuracy,
    one per (prompt, target) pair.
    """

    request: EditRequest

    def generate(self, question: str, *, edited: bool) -> str: ...

    def complete(self, prompt: str, *, edited: bool) -> str: ...

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]: ...

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]: ...


@dataclass(frozen=True)
class Probe:
    """One thing to ask, and the answer it should get after the edit.

    `text` is a prompt to continue (kind 'prompt') or a chat question (kind 'question'); `cloze`,
    when given, is a completion prompt asking the same thing, used for teacher forcing instead of
    `text` (a canary's "The capital of France is" beside "What is the capital of France?").
    `old` is the answer expected before the edit when it differs from `expected` (the fact being
    replaced); teacher forcing then also reports P(old). Fluency probes have no expected answer.
    """

    metric: str
    text: str
    expected: str
    old: str | None = None
    kind: str = PROMPT
    cloze: str | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}")
        if self.kind not in (PROMPT, QUESTION):
            raise ValueError(f"unknown probe kind {self.kind!r}; expected {PROMPT!r} or {QUESTION!r}")
        if not self.text.strip():
            raise ValueError(f"empty {self.metric} probe")
        if self.metric != FLUENCY and not self.expected.strip():
            raise ValueError(f"{self.metric} probe {self.text!r} has no expected answer")

    @property
    def forced_prompt(self) -> str:
        """The prompt the expected answer is teacher forced after."""
        return self.cloze or self.text


def kind_of(text: str) -> str:
    """'question' for text that ends with a question mark (answered in chat), else 'prompt'."""
    return QUESTION if text.rstrip().endswith("?") else PROMPT


# ------------------------------------------------------------------------------------------------
# Canaries: well-known facts the default model gets right, probed for locality


@dataclass(frozen=True)
class Fact:
    """A fact the model knows, asked two ways: `prompt` (completed by `answer`) and `question`.

    `relation` names a `methods.templates` relation where one fits, so that the fact can serve as a
    neighbour of edits of that relation.
    """

    relation: str
    subject: str
    prompt: str
    question: str
    answer: str


@dataclass(frozen=True)
class Canaries:
    """`fixed` facts are probed after every edit; `neighbours` only after edits of their relation."""

    fixed: tuple[Fact, ...]
    neighbours: tuple[Fact, ...] = ()


def load_canaries(path: str | Path | None = None) -> Canaries:
    """The canary set in `path`, by default the one shipped in `kbchat/data/canaries.json`.

    Raises ValueError naming the entry when a fact lacks a field.
    """
    if path is None:
        text = resources.files("kbchat").joinpath("data/canaries.json").read_text(encoding="utf-8")
        where = "kbchat/data/canaries.json"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object with 'fixed' and 'neighbours' lists")

    def facts(key: str) -> tuple[Fact, ...]:
        out = []
        for i, item in enumerate(raw.get(key, [])):
            try:
                out.append(Fact(**{f: str(item[f]) for f in ("relation", "subject", "prompt", "question", "answer")}))
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{where}: {key}[{i}] lacks field {exc}") from exc
        return tuple(out)

    return Canaries(fixed=facts("fixed"), neighbours=facts("neighbours"))


def _same_subject(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        words = s.casefold().split()
        return " ".join(words[1:] if words[:1] == ["the"] else words)

    return norm(a) == norm(b)


def _fact_probe(fact: Fact) -> Probe:
    return Probe(LOCALITY, fact.question, fact.answer, kind=QUESTION, cloze=fact.prompt)


def locality_probes(request: EditRequest, canaries: Canaries, neighbours: int = NEIGHBOURS) -> list[Probe]:
    """The fixed canaries plus up to `neighbours` facts of the request's relation about other subjects.

    Facts about the edit's own subject are left out: the edit may rightly change them. Neighbours
    whose answer is the replaced one come first (an edit that bleeds onto its neighbours shows there
    first), those whose answer is the new target last (they cannot show the target creeping in).
    """
    fixed = [f for f in canaries.fixed if not _same_subject(f.subject, request.subject)]
    relation = relation_of(request)
    near: list[Fact] = []
    if relation is not None:
        candidates = [
            f for f in canaries.neighbours
            if f.relation == relation.name and not _same_subject(f.subject, request.subject) and f not in fixed
        ]

        def rank(fact: Fact) -> int:
            if request.target_true and mentions(fact.answer, request.target_true):
                return 0
            return 2 if mentions(fact.answer, request.target) else 1

        near = sorted(candidates, key=rank)[:neighbours]  # stable: file order within a rank
    return [_fact_probe(f) for f in fixed + near]


# ------------------------------------------------------------------------------------------------
# Planning


def parse_user_probe(text: str, target: str) -> Probe:
    """A `--probe` text as a portability probe: "QUESTION → EXPECTED" (also "->", "=>"), or just a
    question, which then expects the edit's target."""
    parts = _ARROWS.split(text.strip(), maxsplit=1)
    question = parts[0].strip()
    expected = parts[1].strip() if len(parts) == 2 and parts[1].strip() else target
    if not question:
        raise ValueError(f"probe {text!r} has no question before the arrow")
    return Probe(PORTABILITY, question, expected, kind=kind_of(question))


def plan_probes(
    request: EditRequest,
    *,
    user_probes: Sequence[str] = (),
    paraphrases: Sequence[str] | None = None,
    canaries: Canaries | None = None,
) -> list[Probe]:
    """The probes for one chat edit, in metric order.

    - reliability: the edit prompt, and its first chat question (`templates.questions`);
    - generalization: `templates.paraphrases(request, n=2)` plus the user's `paraphrases`;
    - locality: the canaries (the shipped set unless `canaries` is given) and two neighbours;
    - portability: the user's probes (see `parse_user_probe`);
    - fluency: "Tell me about {subject}." in chat.
    """
    old = request.target_true
    target = request.target
    probes = [
        Probe(RELIABILITY, request.text, target, old, PROMPT),
        Probe(RELIABILITY, questions(request)[0], target, old, QUESTION),
    ]
    wordings = list(dict.fromkeys([*template_paraphrases(request, n=PARAPHRASES), *(paraphrases or ())]))
    probes += [Probe(GENERALIZATION, p, target, old, kind_of(p)) for p in wordings if p.strip()]
    probes += locality_probes(request, canaries if canaries is not None else load_canaries())
    probes += [parse_user_probe(p, target) for p in user_probes if p.strip()]
    probes.append(fluency_probe(request))
    return probes


def fluency_probe(request: EditRequest) -> Probe:
    return Probe(FLUENCY, FLUENCY_PROMPT.format(request.subject), "", kind=QUESTION)


# ------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class _Forced:
    """Teacher-forced scores of one probe in one state."""

    expected: float  # log P(expected)
    old: float | None  # log P(old), when the probe names one
    accuracy: float  # token accuracy of expected


def _forced(view: EditView, probes: Sequence[Probe], edited: bool) -> list[_Forced]:
    """All probes' teacher-forced scores in two batched calls."""
    pairs = [(p.forced_prompt, p.expected) for p in probes]
    with_old = [i for i, p in enumerate(probes) if p.old and p.old.strip() and p.old != p.expected]
    olds = [(probes[i].forced_prompt, probes[i].old or "") for i in with_old]
    lps = view.logprobs(pairs + olds, edited=edited)
    accs = view.token_accuracies(pairs, edited=edited)
    if len(lps) != len(pairs) + len(olds) or len(accs) != len(pairs):
        raise ValueError("the edit view returned a different number of scores than pairs asked for")
    old_of = dict(zip(with_old, lps[len(pairs):], strict=True))
    return [_Forced(lps[i], old_of.get(i), accs[i]) for i in range(len(pairs))]


def _prob(logprob: float) -> str:
    p = math.exp(logprob)
    return f"{p:.2f}" if p >= 0.01 or p == 0 else f"{p:.1e}"


def _summary(probe: Probe, scores: _Forced) -> str:
    """E.g. "P(Rome)=0.71 P(Paris)=0.02 acc=1.00"."""
    parts = [f"P({probe.expected})={_prob(scores.expected)}"]
    if scores.old is not None:
        parts.append(f"P({probe.old})={_prob(scores.old)}")
    parts.append(f"acc={scores.accuracy:.2f}")
    return " ".join(parts)


def _forced_check(probe: Probe, before: _Forced | None, after: _Forced) -> CheckRecord:
    if probe.metric == LOCALITY:
        if before is None:
            raise ValueError("a locality check needs the answer before the edit")
        shift = abs(after.expected - before.expected)
        # Both prefer the expected answer token by token, however its probability moved.
        still_argmax = before.accuracy == after.accuracy == 1.0
        passed = shift < LOCALITY_TOLERANCE or still_argmax
        score = math.exp(-shift)  # P ratio, smaller over larger: 1.0 when unchanged
    else:
        prefers_new = after.old is not None and after.expected > after.old
        passed = after.accuracy == 1.0 or prefers_new
        score = after.accuracy
    return CheckRecord(
        metric=probe.metric,
        mode=TEACHER_FORCED,
        probe=probe.forced_prompt,
        expected=probe.expected,
        before=_summary(probe, before) if before is not None else None,
        after=_summary(probe, after),
        passed=passed,
        score=score,
    )


def _answer(view: EditView, probe: Probe, edited: bool) -> str:
    if probe.kind == QUESTION:
        return view.generate(probe.text, edited=edited)
    return view.complete(probe.text, edited=edited)


def _generation_check(probe: Probe, before: str | None, after: str, target: str) -> CheckRecord:
    if probe.metric == LOCALITY:
        if before is None:
            raise ValueError("a locality check needs the answer before the edit")
        # Unchanged as far as the expected answer goes, and the edit's target has not crept in
        # (a memory edit retrieved for an unrelated question shows up this way).
        leaked = mentions(after, target) and not mentions(before, target)
        passed = mentions(after, probe.expected) == mentions(before, probe.expected) and not leaked
    else:
        passed = mentions(after, probe.expected)
    return CheckRecord(probe.metric, GENERATION, probe.text, probe.expected, before, after, passed,
                       1.0 if passed else 0.0)


def entropy_text(entropy: float, text: str) -> str:
    """How a fluency check stores a generation and its n-gram entropy: "entropy 5.210: text"."""
    return f"entropy {entropy:.3f}: {text}"


def entropy_of(stored: str | None) -> float | None:
    """The entropy in a fluency check's `before`/`after` (see `entropy_text`), None if absent."""
    match = _ENTROPY.match(stored or "")
    return float(match.group(1)) if match else None


def _fluency_check(probe: Probe, before: str | None, after: str) -> CheckRecord:
    if before is None:
        raise ValueError("a fluency check needs the text generated before the edit")
    entropy_before, entropy_after = ngram_entropy(before), ngram_entropy(after)
    passed = entropy_after >= FLUENCY_RATIO * entropy_before
    return CheckRecord(
        metric=FLUENCY,
        mode=GENERATION,
        probe=probe.text,
        expected=f"n-gram entropy >= {FLUENCY_RATIO:g} x before ({FLUENCY_RATIO * entropy_before:.3f})",
        before=entropy_text(entropy_before, before),
        after=entropy_text(entropy_after, after),
        passed=passed,
        score=entropy_after,
    )


def run_checks(
    view: EditView,
    probes: Sequence[Probe],
    *,
    on_check: Callable[[CheckRecord], None] | None = None,
    baseline: bool = True,
) -> list[CheckRecord]:
    """Measure every probe, returning the checks in the order they finished.

    Each probe but fluency gives two checks, mode 'teacher_forced' and 'generation'; fluency gives
    one generation check. The teacher-forced checks come first, all probes scored in one batch per
    state; then each probe is generated before and after. `on_check` is called with each check as
    soon as it is complete. Scores: token accuracy after the edit for teacher-forced reliability,
    generalization and portability; for teacher-forced locality the ratio of P(expected) after to
    before, smaller over larger (1.0 when unchanged); 1.0 or 0.0 for a generation check; for
    fluency the n-gram entropy after the edit.

    `baseline=False` skips everything measured before the edit (`before` is None): for re-checking
    edits later, where only the answer now matters. Locality and fluency need the baseline and
    raise ValueError without it.
    """
    if not baseline and any(p.metric in (LOCALITY, FLUENCY) for p in probes):
        raise ValueError("locality and fluency compare with the answer before the edit: they need baseline=True")
    emit = on_check or (lambda _check: None)
    target = view.request.target
    checks: list[CheckRecord] = []

    def done(check: CheckRecord) -> None:
        checks.append(check)
        emit(check)

    scored = [p for p in probes if p.metric != FLUENCY]
    if scored:
        before = _forced(view, scored, edited=False) if baseline else [None] * len(scored)
        after = _forced(view, scored, edited=True)
        for probe, b, a in zip(scored, before, after, strict=True):
            done(_forced_check(probe, b, a))
    for probe in probes:
        answer_before = _answer(view, probe, edited=False) if baseline else None
        answer_after = _answer(view, probe, edited=True)
        if probe.metric == FLUENCY:
            done(_fluency_check(probe, answer_before, answer_after))
        else:
            done(_generation_check(probe, answer_before, answer_after, target))
    return checks


def with_metric(probes: Sequence[Probe], metric: str) -> list[Probe]:
    """The probes of one metric (e.g. reliability, to re-check an edit later)."""
    return [p for p in probes if p.metric == metric]

