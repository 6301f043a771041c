"""The running engine seen with and without one edit: the `EditView` the audit's checks run against.

"With" is the system as it answers now (for memory edits: retrieval decides whether the edit acts).
"Without" hides a memory edit from retrieval, or, for a weight edit, switches on its negation as an
in-model patch for the audit's own forward passes only, so concurrent chats are unaffected. Only the
runtime's and the planner's public API is used.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from kbchat.engine.planning import Plan, Planner
from kbchat.evaluation.metrics import target_logprobs, token_accuracies
from kbchat.ledger import StoredEdit
from kbchat.runtime import ModelRuntime
from methods import EditRequest

AUDIT_MAX_TOKENS = 32
COMPLETION_TOKENS = 12


class LiveEditView:
    """`EditView` of edit `row` on the live engine. `undo_key`: the runtime patch that cancels a weight
    edit (None for memory edits)."""

    def __init__(self, runtime: ModelRuntime, planner: Planner, row: StoredEdit,
                 undo_key: Hashable | None) -> None:
        self.runtime = runtime
        self.planner = planner
        self.row = row
        self.request = EditRequest(row.subject, row.prompt, row.target, row.target_true)
        self.undo_key = undo_key
        self._answers: dict[tuple, str] = {}  # this view's own memo: identical greedy inputs, one answer

    def _plan(self, text: str, *, chat: bool, edited: bool) -> tuple[Plan, tuple[Hashable, ...]]:
        """The plan, and the patch that hides a weight edit ("before") if any."""
        hidden = frozenset() if edited or self.row.kind == "weight" else frozenset({self.row.id})
        plan = self.planner.plan(text, chat=chat, exclude=hidden)
        return plan, (self.undo_key,) if not edited and self.undo_key is not None else ()

    def _answer(self, text: str, limit: int, *, chat: bool, edited: bool) -> str:
        plan, undo = self._plan(text, chat=chat, edited=edited)
        # An out-of-scope probe of a memory edit is generated once for "before" and "after".
        key = (repr(plan.prompt), plan.patches, undo, limit)  # a Prompt holds dicts: not hashable itself
        if key not in self._answers:
            pieces = self.runtime.generate(plan.prompt, plan.patches, limit, names=plan.names, targets=plan.targets, fixed=undo)
            self._answers[key] = "".join(pieces).strip()
        return self._answers[key]

    def generate(self, question: str, *, edited: bool) -> str:
        return self._answer(question, AUDIT_MAX_TOKENS, chat=True, edited=edited)

    def complete(self, prompt: str, *, edited: bool) -> str:
        return self._answer(prompt, COMPLETION_TOKENS, chat=False, edited=edited)

    def _scored(self, fn, pairs: Sequence[tuple[str, str]], edited: bool) -> list[float]:
        """Score pairs in one batch per distinct set of active patches."""
        groups: dict[tuple, list[int]] = {}
        prompts: list[str] = []
        for i, (prompt, _target) in enumerate(pairs):
            plan, undo = self._plan(prompt, chat=False, edited=edited)
            prompts.append(plan.prompt.text or prompt)
            groups.setdefault((*plan.patches, *undo), []).append(i)
        out = [0.0] * len(pairs)
        for patches, rows in groups.items():
            batch = [(prompts[i], pairs[i][1]) for i in rows]
            for i, value in zip(rows, self.runtime.score(fn, batch, patches), strict=True):
                out[i] = value
        return out

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return self._scored(target_logprobs, pairs, edited)

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return self._scored(token_accuracies, pairs, edited)
