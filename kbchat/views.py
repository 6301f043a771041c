"""The model with and without one edit, for the audit: the `EditView` the checks are written against.

"With" is the system as it answers now (for memory edits: retrieval decides whether the edit acts).
"Without" hides a memory edit from retrieval, or, for a weight edit, switches on its negation as an
in-model patch on the auditing thread only, so concurrent chats are unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

from kbchat.records import CheckRecord
from methods import Delta, EditRequest, Update
from methods import evaluation as ev

if TYPE_CHECKING:
    from kbchat.facade import KnowledgeChat
    from kbchat.ledger import StoredEdit

AUDIT_MAX_TOKENS = 32


def negated(delta: Delta) -> Delta:
    """The delta that cancels `delta` (to first order in float rounding)."""
    return Delta(delta.method, tuple(Update(u.module, -u.left, u.right) for u in delta.updates), delta.meta)


class LiveEditView:
    def __init__(self, chat: KnowledgeChat, row: StoredEdit, undo_key: Hashable | None) -> None:
        self.chat = chat
        self.row = row
        self.request = EditRequest(row.subject, row.prompt, row.target, row.target_true)
        self._undo_key = undo_key
        self._answers: dict[tuple, str] = {}

    def _exclude(self, edited: bool) -> frozenset[int]:
        return frozenset() if edited or self.row.kind == "weight" else frozenset({self.row.id})

    def _extra(self, edited: bool) -> tuple:
        return (self._undo_key,) if not edited and self._undo_key is not None else ()

    def _answer(self, plan, limit: int, edited: bool) -> str:
        # Identical inputs give identical greedy answers: an out-of-scope probe of a memory edit is
        # generated once for "before" and "after".
        select = tuple([*plan.select, *self._extra(edited)])
        key = (plan.prompt, repr(plan.messages), select, limit)
        if key not in self._answers:
            self._answers[key] = self.chat._stream_plan(plan, limit, select=self._extra(edited)).text()
        return self._answers[key]

    def generate(self, question: str, *, edited: bool) -> str:
        return self._answer(self.chat.plan(question, exclude=self._exclude(edited)), AUDIT_MAX_TOKENS, edited)

    def complete(self, prompt: str, *, edited: bool) -> str:
        return self._answer(self.chat.plan(prompt, chat=False, exclude=self._exclude(edited)), 12, edited)

    def _scored(self, fn, pairs: Sequence[tuple[str, str]], edited: bool) -> list[float]:
        """Score pairs in one batch per distinct set of active patches."""
        groups: dict[tuple, list[int]] = {}
        prompts = []
        for i, (prompt, _target) in enumerate(pairs):
            plan = self.chat.plan(prompt, chat=False, exclude=self._exclude(edited))
            prompts.append(plan.prompt)
            groups.setdefault(tuple([*plan.select, *self._extra(edited)]), []).append(i)
        out = [0.0] * len(pairs)
        for select, rows in groups.items():
            batch = [(prompts[i], pairs[i][1]) for i in rows]
            with self.chat._lock.read(), (self.chat._scoped.select(select) if select else nullcontext()):
                for i, value in zip(rows, fn(self.chat.model, self.chat.tokenizer, batch), strict=True):
                    out[i] = value
        return out

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return self._scored(ev.target_logprobs, pairs, edited)

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return self._scored(ev.token_accuracies, pairs, edited)


def run_audit(view: LiveEditView, probes: Sequence[str], on_check: Callable[[CheckRecord], None]) -> None:
    """Plan the edit's probes and run every check, storing each as it finishes."""
    from kbchat.audit import plan_probes, run_checks

    run_checks(view, plan_probes(view.request, user_probes=probes), on_check=on_check)
