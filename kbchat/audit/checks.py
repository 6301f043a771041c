"""The checks every edit must pass: how answers before and after it are judged.

An audit is pure logic over an `EditView`, which the engine implements: it answers a probe as the
system was before the edit (`edited=False`) and with it (`edited=True`), by real generation and by
teacher forcing. `run_checks` turns probes (`kbchat.audit.probes`) into `CheckRecord`s, each probe
measured two ways:

- teacher forced: log P(expected | prompt) and EasyEdit's token accuracy, with P(old) beside it when
  the replaced answer is known;
- generation: what the system actually says (a raw greedy continuation for a prompt, a chat answer
  for a question), and whether it names the expected answer (`kbchat.evaluation.metrics.mentions`).

Teacher forcing overstates success (Yang et al. 2025, "The Mirage of Model Editing"), which is why
both are kept side by side.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kbchat.audit.probes import FLUENCY, LOCALITY, QUESTION, Probe
from kbchat.evaluation.metrics import mentions, ngram_entropy
from kbchat.records import CheckRecord
from methods.requests import EditRequest

TEACHER_FORCED = "teacher_forced"
GENERATION = "generation"
MODES = (TEACHER_FORCED, GENERATION)

# A locality probe keeps its answer when log P(expected) moves by less than this (in nats: a
# factor of e), or when the expected answer is the argmax at every token both before and after.
LOCALITY_TOLERANCE = 1.0
# Fluency passes when the n-gram entropy after the edit is at least this share of the one before.
FLUENCY_RATIO = 0.9

_ENTROPY = re.compile(r"^entropy (-?\d+(?:\.\d+)?): ")


@runtime_checkable
class EditView(Protocol):
    """One edit as the audit sees it; implemented by the engine.

    `edited=False` answers as the system was before this edit, `edited=True` with it. Answers are
    greedy and deterministic; `generate` goes through the chat template and whatever memory or
    retrieval path the real app uses, `complete` continues a raw prompt. `answers` gives many at
    once: for each (kind, text), `generate(text)` when kind is QUESTION, else `complete(text)`, in
    order (a view may batch them; the answers are the same). `logprobs` returns the summed
    log P(target | prompt), teacher forced, and `token_accuracies` EasyEdit's token accuracy, one per
    (prompt, target) pair.
    """

    request: EditRequest

    def generate(self, question: str, *, edited: bool) -> str: ...

    def complete(self, prompt: str, *, edited: bool) -> str: ...

    def answers(self, requests: Sequence[tuple[str, str]], *, edited: bool) -> list[str]: ...

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]: ...

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]: ...


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
        label = f" ({probe.rival})" if probe.rival else ""
        parts.append(f"P({probe.old}){label}={_prob(scores.old)}")
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


def _answers(view: EditView, probes: Sequence[Probe], edited: bool) -> list[str]:
    """Every probe's generation in one state, asked for in one call (a view written before `answers`
    existed is asked one probe at a time)."""
    ask = getattr(view, "answers", None)
    if not callable(ask):
        return [view.generate(p.text, edited=edited) if p.kind == QUESTION else view.complete(p.text, edited=edited)
                for p in probes]
    found = ask([(p.kind, p.text) for p in probes], edited=edited)
    if len(found) != len(probes):
        raise ValueError("the edit view returned a different number of answers than asked for")
    return list(found)


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
    state; then the generation checks, in probe order, once every probe has been generated before
    and after (one `answers` call per state). `on_check` is called with each check as soon as it is
    complete. Scores: token accuracy after the edit for teacher-forced reliability,
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
    answers_before: Sequence[str | None] = _answers(view, probes, edited=False) if baseline else [None] * len(probes)
    answers_after = _answers(view, probes, edited=True)
    for probe, answer_before, answer_after in zip(probes, answers_before, answers_after, strict=True):
        if probe.metric == FLUENCY:
            done(_fluency_check(probe, answer_before, answer_after))
        else:
            done(_generation_check(probe, answer_before, answer_after, target))
    return checks
