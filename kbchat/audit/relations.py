"""Rephrasings and chat questions for an edit, without a dataset.

An edit's prompt is matched against the wordings CounterFact uses for its relations (ParaRel's
templates: the wordings of CounterFact's prompts, counted in its train and validation files,
cover 95% of them; the rest, such as "{}, the", are ambiguous), plus a few relations chat users
edit often (founders, authors, CEOs, designers, directors, spouses). The table is data, shipped in
`kbchat/audit/data/relations.json`. A recognised relation gives other wordings of the same fact,
as continuation prompts the target completes ("Where is {}? It is located in") and as questions a
chat model answers ("Where is {}?"). An unrecognised prompt falls back to generic rewordings of
the prompt itself.

Subjects are inserted verbatim. An article written before the subject's slot ("The {} is
located in", with subject "Eiffel Tower") stays with the subject, lower-cased inside a
sentence: "Where is the Eiffel Tower?".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from methods.requests import EditRequest

RELATIONS_FILE = "data/relations.json"


@dataclass(frozen=True)
class Relation:
    """One relation: how prompts phrase it, and the wordings used to test it.

    `patterns` are prompt templates that express the relation, matched after normalisation (case,
    spacing, an article before "{}", trailing punctuation); the first is the canonical wording.
    `rephrasings` are continuation prompts the object completes, at least one in question form;
    `questions` are chat questions the object answers. All use "{}" once for the subject.
    """

    name: str
    patterns: tuple[str, ...]
    rephrasings: tuple[str, ...]
    questions: tuple[str, ...]


def load_relations() -> tuple[Relation, ...]:
    """The shipped relation table, in file order (most frequent CounterFact wordings first)."""
    text = resources.files("kbchat.audit").joinpath(RELATIONS_FILE).read_text(encoding="utf-8")
    return tuple(
        Relation(item["name"], tuple(item["patterns"]), tuple(item["rephrasings"]), tuple(item["questions"]))
        for item in json.loads(text)["relations"]
    )


RELATIONS: tuple[Relation, ...] = load_relations()

_ARTICLE_SLOT = re.compile(r"\b(the|a|an) \{\}", re.IGNORECASE)
# Words that may open a prompt and are lower-cased when a generic prefix is put before it;
# anything else (a name) keeps its capital.
_LOWERABLE = {"the", "a", "an", "in", "on", "at", "what", "which", "who", "where", "when", "how", "this", "it"}


def _normalise(template: str) -> str:
    """The matching key of a template: "The  {}’s capital," -> "{}'s capital"."""
    text = template.replace("\u2019", "'").replace("\u00a0", " ").strip()
    text = re.sub(r"\s+", " ", text)
    text = _ARTICLE_SLOT.sub("{}", text)
    return text.rstrip(" ,:;.").lower()


# A read-only view of the table, keyed for lookup; not a cache (nothing is added later).
_BY_PATTERN: Mapping[str, Relation] = MappingProxyType(
    {_normalise(p): relation for relation in RELATIONS for p in relation.patterns}
)


def relation_of(request: EditRequest) -> Relation | None:
    """The relation whose wording the request's prompt uses, None if it matches none."""
    return _BY_PATTERN.get(_normalise(request.template))


def _subject_phrase(request: EditRequest) -> str:
    """The subject with the article its prompt put before it, lower-cased: "the Eiffel Tower"."""
    match = _ARTICLE_SLOT.search(request.template)
    return f"{match.group(1).lower()} {request.subject}" if match else request.subject


def _fill(template: str, request: EditRequest) -> str:
    """`template` with the subject phrase for "{}"; an article opening the sentence is capitalised
    (the subject itself is never changed)."""
    phrase = _subject_phrase(request)
    text = template.replace("{}", phrase)
    if template.startswith("{}") and phrase != request.subject:
        text = text[0].upper() + text[1:]
    return text


def _generic_rephrasings(request: EditRequest) -> list[str]:
    """Rewordings of the prompt itself, for relations the table does not know."""
    text = request.template.replace("{}", request.subject)
    opens_with_word = not request.template.startswith("{}") and text.split(" ", 1)[0].lower() in _LOWERABLE
    inner = text[0].lower() + text[1:] if opens_with_word else text
    return [
        f"In fact, {inner}",
        f"To be precise, {inner}",
        f"What about {_subject_phrase(request)}? {text}",
        f"As everyone knows, {inner}",
        f"Here is a fact: {text}",
    ]


def paraphrases(request: EditRequest, n: int = 3) -> list[str]:
    """Up to `n` rewordings of the request's prompt, each to be completed by the request's target.

    For a recognised relation they come from its rephrasings (one in question form among the
    first two), skipping any that equal the prompt; when those run out, or the relation is not
    recognised, generic rewordings of the prompt follow ("In fact, ...", "What about X? ...").
    Deterministic; fewer than `n` only if `n` exceeds all available wordings.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    own = _normalise(request.template)
    relation = relation_of(request)
    specific = [t for t in relation.rephrasings if _normalise(t) != own] if relation else []
    candidates = [_fill(t, request) for t in specific] + _generic_rephrasings(request)
    return candidates[:n]


def questions(request: EditRequest) -> list[str]:
    """Chat questions whose answer is the request's target ("Where is the Eiffel Tower?").

    For an unrecognised relation, instructions to complete the prompt instead.
    """
    relation = relation_of(request)
    if relation is not None:
        return [_fill(q, request) for q in relation.questions]
    text = request.template.replace("{}", request.subject)
    return [f'Complete this sentence: "{text} ..."', f"Fill in the blank: {text} ___."]


def neighbors_template(request: EditRequest) -> str | None:
    """The canonical template of the request's relation ("{} is located in"), to ask the same
    question about other subjects; None when the relation is not recognised."""
    relation = relation_of(request)
    return relation.patterns[0] if relation is not None else None
