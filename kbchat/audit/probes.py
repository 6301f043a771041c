"""What an edit is probed with: the `Probe` record, and the probes a chat edit gets.

`plan_probes` chooses the probes for a chat edit: the edit prompt and a chat question for
reliability, relation rephrasings (`kbchat.audit.relations`) for generalization, canaries (facts the
model knows, shipped in `kbchat/audit/data/canaries.json`) and neighbours of the same relation for
locality, the user's own probes for portability, and one open question for fluency. A benchmark
builds its probes from its dataset instead (`kbchat.evaluation.probes.case_probes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kbchat.audit.relations import paraphrases as template_paraphrases
from kbchat.audit.relations import questions, relation_of
from kbchat.evaluation.metrics import mentions
from methods.requests import EditRequest

RELIABILITY = "reliability"
GENERALIZATION = "generalization"
LOCALITY = "locality"
PORTABILITY = "portability"
FLUENCY = "fluency"
METRICS = (RELIABILITY, GENERALIZATION, LOCALITY, PORTABILITY, FLUENCY)

PROMPT = "prompt"  # continued as raw text (`EditView.complete`)
QUESTION = "question"  # answered through the chat template (`EditView.generate`)

FLUENCY_PROMPT = "Tell me about {}."
NEIGHBOURS = 2
PARAPHRASES = 2
CANARIES_FILE = "data/canaries.json"

_ARROWS = re.compile(r"\s*(?:→|->|=>)\s*")

CHAT_ANSWER = "chat answer"  # where a probe's old answer came from (see kbchat.audit.rivals)
RAW_CONTINUATION = "raw continuation"


@dataclass(frozen=True)
class Probe:
    """One thing to ask, and the answer it should get after the edit.

    `text` is a prompt to continue (kind 'prompt') or a chat question (kind 'question'); `cloze`,
    when given, is a completion prompt asking the same thing, used for teacher forcing instead of
    `text` (a canary's "The capital of France is" beside "What is the capital of France?").
    `old` is the answer expected before the edit when it differs from `expected` (the fact being
    replaced); teacher forcing then also reports P(old), labelled with `rival` (where `old` came from:
    the model's chat answer, its raw continuation) when given. Fluency probes have no expected answer.
    """

    metric: str
    text: str
    expected: str
    old: str | None = None
    kind: str = PROMPT
    cloze: str | None = None
    rival: str | None = None

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

    `relation` names a `kbchat.audit.relations` relation where one fits, so that the fact can serve as a
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
    """The canary set in `path`, by default the one shipped in `kbchat/audit/data/canaries.json`.

    Raises ValueError naming the entry when a fact lacks a field.
    """
    if path is None:
        text = resources.files("kbchat.audit").joinpath(CANARIES_FILE).read_text(encoding="utf-8")
        where = f"kbchat/audit/{CANARIES_FILE}"
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
    rivals: Mapping[str, str] | None = None,
) -> list[Probe]:
    """The probes for one chat edit, in metric order.

    - reliability: the edit prompt, and its first chat question (`relations.questions`);
    - generalization: `relations.paraphrases(request, n=2)` plus the user's `paraphrases`;
    - locality: the canaries (the shipped set unless `canaries` is given) and two neighbours;
    - portability: the user's probes (see `parse_user_probe`);
    - fluency: "Tell me about {subject}." in chat.

    `rivals` (see `rivals.find_rivals`): the old answer is the model's chat answer when known, else
    `request.target_true`; a raw continuation that differs from it adds a second reliability probe.
    """
    rivals = dict(rivals or {})
    chat = rivals.get(CHAT_ANSWER)
    old, label = (chat, CHAT_ANSWER) if chat else (request.target_true, None)
    target = request.target
    probes = [
        Probe(RELIABILITY, request.text, target, old, PROMPT, rival=label),
        Probe(RELIABILITY, questions(request)[0], target, old, QUESTION, rival=label),
    ]
    raw = rivals.get(RAW_CONTINUATION)
    if raw and old and raw.casefold() != old.casefold() and raw.casefold() != target.casefold():
        probes.append(Probe(RELIABILITY, request.text, target, raw, PROMPT, rival=RAW_CONTINUATION))
    wordings = list(dict.fromkeys([*template_paraphrases(request, n=PARAPHRASES), *(paraphrases or ())]))
    probes += [Probe(GENERALIZATION, p, target, old, kind_of(p), rival=label) for p in wordings if p.strip()]
    probes += locality_probes(request, canaries if canaries is not None else load_canaries())
    probes += [parse_user_probe(p, target) for p in user_probes if p.strip()]
    probes.append(fluency_probe(request))
    return probes


def fluency_probe(request: EditRequest) -> Probe:
    return Probe(FLUENCY, FLUENCY_PROMPT.format(request.subject), "", kind=QUESTION)


def with_metric(probes: Sequence[Probe], metric: str) -> list[Probe]:
    """The probes of one metric (e.g. reliability, to re-check an edit later)."""
    return [p for p in probes if p.metric == metric]

