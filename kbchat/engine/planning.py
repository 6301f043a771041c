"""How a question is put to the model: the in-scope memory edits decide the prompt and the patches.

In-scope serac edits switch on their in-model patches (and, for chat, are quoted as data in a system
message), and their subjects are written as the edits spell them; in-scope ike edits turn the input
into IKE's completion-format prompt. Active weight edits whose subject the conversation names (in
any case, or with a slip) are listed too: the answer is then worded without them and only the new
object with them (steering). The subjects of both are given to the model spelt as their edits have
them, since patches and edited weights are keyed to that spelling.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kbchat.config import EngineSettings
from kbchat.engine.ike import IkeDemos, ike_prompt
from kbchat.memory.active import fact_of, facts_message
from kbchat.memory.book import MemoryBook
from kbchat.memory.names import Known, canonical_spelling
from kbchat.runtime import Prompt
from kbchat.runtime.guard import states
from kbchat.runtime.steering import Steer
from kbchat.service import Message

HISTORY_TURNS = 2  # earlier user turns whose edits stay in scope


@dataclass(frozen=True)
class Plan:
    prompt: Prompt
    used: tuple[int, ...]  # every in-scope memory edit
    patches: tuple[int, ...]  # the serac patches to switch on
    names: tuple[str, ...] = ()  # their subjects: an answer that names one copies it unpatched
    targets: tuple[str, ...] = ()  # their new objects: once the answer states one, the patches rest
    steer: Steer | None = None  # the unpatched model words the answer, the patches the new object
    weights: tuple[int, ...] = ()  # active weight edits whose subject the conversation names


class WeightEdit(Protocol):
    """What the planner reads of an active weight edit (a ledger row has it)."""

    id: int
    subject: str
    target: str


def named_weight_edits(weights: Sequence[WeightEdit], texts: Sequence[str],
                       known: Known = lambda _: False) -> list[WeightEdit]:
    """The edits of `weights` whose subject one of `texts` names: whole words in any case, or written
    with a slip `canonical_spelling` would mend (`known`: real words, never taken for a slip)."""
    return [w for w in weights
            if any(states(t, (w.subject,)) or states(canonical_spelling(t, (w.subject,), known), (w.subject,))
                   for t in texts)]


def steer_for(settings: EngineSettings, quoted: Mapping[str, str] | None) -> Steer | None:
    """How serac answers are steered as `settings` ask (`serac_steer`, `_unquoted`, `_fallback`), given
    the system message `quoted` that states their facts (None when none is given)."""
    if not settings.serac_steer:
        return None
    unquoted = settings.serac_steer_unquoted and quoted is not None
    return Steer(without=(quoted,) if unquoted else (), fallback=settings.serac_steer_fallback)


def weight_steer_for(settings: EngineSettings) -> Steer | None:
    """How answers naming a weight edit's subject are steered (`weight_steer`): no quoted facts to hide;
    a first sentence that misses the object falls back as serac's does."""
    return Steer(fallback=settings.serac_steer_fallback) if settings.weight_steer else None


class Planner:
    def __init__(self, book: MemoryBook, settings: EngineSettings) -> None:
        self.book = book
        self.settings = settings
        self._ike: IkeDemos | None = None  # loaded when an ike edit is first in scope

    def plan(self, text: str, *, history: Sequence[Message] = (), chat: bool = True, memory: bool = True,
             exclude: frozenset[int] = frozenset(), weights: Sequence[WeightEdit] = ()) -> Plan:
        """The plan for `text`: a chat question after `history` (chat=True) or a raw prompt to continue.
        `weights`: the active weight edits (those named in the conversation are steered, when the
        settings' `weight_steer` is on; `exclude` hides them as it hides memory edits)."""
        used = self.in_scope(text, history, exclude) if memory else []
        ids = tuple(r.id for r in used)
        serac = [r for r in used if r.method == "serac"]
        turns = [text, *self._earlier(history)]
        known = self.book.embedder.knows
        weighted = named_weight_edits([w for w in weights if w.id not in exclude], turns, known) \
            if self.settings.weight_steer else []
        patches = tuple(r.id for r in serac)
        both = [*serac, *weighted]
        marks = {"names": tuple(dict.fromkeys(r.subject for r in both)),
                 "targets": tuple(dict.fromkeys(r.target for r in both)),
                 "steer": self._steer(serac, weighted), "weights": tuple(w.id for w in weighted)}
        if any(r.method == "ike" for r in used):
            facts = [fact_of(r) for r in used]
            demos = self._demos().select(facts[0], self.settings.ike_demos)
            return Plan(Prompt(text=ike_prompt(facts, text, demos), stops=("\n",)), ids, patches, **marks)
        # Patches and edited weights are keyed to the subject's name as the edit has it: a question
        # writing it in another case or with a slip ("efifel tower") is given with the edit's spelling.
        spelt = marks["names"]
        spell = functools.partial(canonical_spelling, subjects=spelt, known=known)
        if not chat:
            return Plan(Prompt(text=spell(text)), ids, patches, **marks)
        messages = [*({**m, "content": spell(m["content"])} if m.get("role") == "user" and spelt else dict(m)
                      for m in history), {"role": "user", "content": spell(text)}]
        if serac and self.settings.quote_facts:
            messages = [facts_message(serac), *messages]
        return Plan(Prompt(messages=tuple(messages)), ids, patches, **marks)

    def _steer(self, serac: Sequence, weighted: Sequence[WeightEdit]) -> Steer | None:
        if serac:
            return steer_for(self.settings, facts_message(serac) if self.settings.quote_facts else None)
        return weight_steer_for(self.settings) if weighted else None

    def in_scope(self, text: str, history: Sequence[Message] = (),
                 exclude: frozenset[int] = frozenset()) -> list:
        """Memory edits in scope for the conversation: those the question is about, then those of the
        user's earlier turns (newest first, up to HISTORY_TURNS), so a follow-up that only refers to
        the subject ("Which continent is it on?") keeps the edit."""
        found = {r.id: r for r in self.book.retrieve(text, exclude)}
        for turn in self._earlier(history):
            for r in self.book.retrieve(turn, exclude):
                found.setdefault(r.id, r)
        return list(found.values())

    @staticmethod
    def _earlier(history: Sequence[Message]) -> list[str]:
        """The user's earlier turns that keep their edits in scope, newest first."""
        return [m["content"] for m in history if m.get("role") == "user"][-HISTORY_TURNS:][::-1]

    def _demos(self) -> IkeDemos:
        if self._ike is None:
            self._ike = IkeDemos.load(self.book.embedder)
        return self._ike
