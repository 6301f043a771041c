"""The running engine seen with and without one edit: the `EditView` the audit's checks run against.

"With" is the system as it answers now (for memory edits: retrieval decides whether the edit acts).
"Without" hides a memory edit from retrieval, or, for a weight edit, switches on its negation as an
in-model patch for the audit's own forward passes only, so concurrent chats are unaffected. Only the
runtime's and the planner's public API is used.

Generations are asked for together (`answers`): those that need no name guard are decoded in batches,
one batch per set of active patches; answers that depend only on the weights (no patch at all) are
shared across audits through the engine's `AnswerCache`, keyed by the weights' fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from kbchat.audit.answers import AnswerCache
from kbchat.audit.probes import PROMPT, QUESTION
from kbchat.engine.planning import Plan, Planner
from kbchat.evaluation.metrics import target_scores
from kbchat.ledger import StoredEdit
from kbchat.runtime import ModelRuntime
from methods import EditRequest

AUDIT_MAX_TOKENS = 32
COMPLETION_TOKENS = 12
BATCH_ROWS = 16  # generations decoded together at most


@dataclass(frozen=True)
class _Job:
    """One generation to make: its plan, the patch hiding a weight edit (if any) and its limit."""

    plan: Plan
    undo: tuple[Hashable, ...]
    limit: int
    chat: bool
    unedited: tuple[Hashable, ...] = ()  # the patches cancelling the plan's steered weight edits

    @property
    def key(self) -> tuple:
        """Identical keys, identical greedy answers (a Prompt holds dicts: its repr stands for it)."""
        return (repr(self.plan.prompt), self.plan.patches, self.undo, self.limit, self.unedited)

    @property
    def guarded(self) -> bool:
        """Whether the answer needs the name guard, which works one answer at a time."""
        return bool(self.plan.names and (self.plan.patches or self.unedited))

    @property
    def weights_only(self) -> bool:
        """Whether the answer depends on nothing but the weights, the prompt and the limit."""
        return not self.plan.patches and not self.undo and not self.unedited

    @property
    def group(self) -> tuple:
        """Jobs with the same group run in one batch: same format, patches and limit."""
        return (self.chat, self.plan.patches, self.undo, self.limit, self.unedited)


class LiveEditView:
    """`EditView` of edit `row` on the live engine. `undo_key`: the runtime patch that cancels a weight
    edit (None for memory edits).

    `cache` and `weights` (a callable giving the fingerprint of the weights as the ledger stores it):
    where answers that depend only on the weights are shared across audits; without both, none are.
    `batch=False` generates one answer at a time (the path before batching, kept for comparison).
    `weight_edits` (the active ones) and `unedited` (the patch keys cancelling some of them) let
    answers naming a weight edit's subject be steered as the engine's are.
    """

    def __init__(self, runtime: ModelRuntime, planner: Planner, row: StoredEdit, undo_key: Hashable | None,
                 *, cache: AnswerCache | None = None, weights: Callable[[], str | None] | None = None,
                 batch: bool = True, weight_edits: Sequence[StoredEdit] = (),
                 unedited: Callable[[Sequence[int]], tuple[Hashable, ...]] = lambda ids: ()) -> None:
        self.runtime = runtime
        self.planner = planner
        self.row = row
        self.request = EditRequest(row.subject, row.prompt, row.target, row.target_true)
        self.undo_key = undo_key
        self.cache = cache
        self.weights = weights
        self.batch = batch
        self.weight_edits = tuple(weight_edits)
        self.unedited = unedited
        self._answers: dict[tuple, str] = {}  # this view's own memo: identical greedy inputs, one answer
        self._forced: dict[tuple[str, str, bool], tuple[float, float]] = {}  # (log P, accuracy) per pair

    def _plan(self, text: str, *, chat: bool, edited: bool) -> tuple[Plan, tuple[Hashable, ...]]:
        """The plan, and the patch that hides a weight edit ("before") if any."""
        hidden = frozenset() if edited else frozenset({self.row.id})  # from retrieval, or from steering
        plan = self.planner.plan(text, chat=chat, exclude=hidden, weights=self.weight_edits)
        return plan, (self.undo_key,) if not edited and self.undo_key is not None else ()

    def _job(self, kind: str, text: str, edited: bool) -> _Job:
        chat = kind == QUESTION
        plan, undo = self._plan(text, chat=chat, edited=edited)
        return _Job(plan, undo, AUDIT_MAX_TOKENS if chat else COMPLETION_TOKENS, chat, self.unedited(plan.weights))

    def answers(self, requests: Sequence[tuple[str, str]], *, edited: bool) -> list[str]:
        """The answer to each (kind, text): a chat answer for kind QUESTION, else a raw completion;
        each as `generate` / `complete` gives it, all generated together."""
        jobs = [self._job(kind, text, edited) for kind, text in requests]
        # An out-of-scope probe of a memory edit is generated once for "before" and "after".
        todo = list({job.key: job for job in jobs if job.key not in self._answers}.values())
        self._make(todo)
        return [self._answers[job.key] for job in jobs]

    def generate(self, question: str, *, edited: bool) -> str:
        return self.answers([(QUESTION, question)], edited=edited)[0]

    def complete(self, prompt: str, *, edited: bool) -> str:
        return self.answers([(PROMPT, prompt)], edited=edited)[0]

    def _make(self, jobs: Sequence[_Job]) -> None:
        """The answers of `jobs` (distinct keys) into the memo, taking and giving the shared ones."""
        cache, weights = self.cache, self.weights
        if cache is None or weights is None:
            self._generate(jobs)
            return
        state = weights()
        for job in jobs:
            if job.weights_only and (found := cache.get((state, *job.key))) is not None:
                self._answers[job.key] = found
        missing = [job for job in jobs if job.key not in self._answers]
        self._generate(missing)
        if weights() != state:  # the weights changed meanwhile: these answers may be of either
            return
        for job in missing:
            if job.weights_only:
                cache.put((state, *job.key), self._answers[job.key])

    def _generate(self, jobs: Sequence[_Job]) -> None:
        """Generate `jobs` into the memo: guarded ones one at a time, the others in batches of at most
        BATCH_ROWS per group (everything one at a time when `batch` is off)."""
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            if self.batch and not job.guarded:
                groups.setdefault(job.group, []).append(job)
            else:
                self._answers[job.key] = self._one(job)
        for rows in groups.values():
            for start in range(0, len(rows), BATCH_ROWS):
                self._batch(rows[start:start + BATCH_ROWS])

    def _one(self, job: _Job) -> str:
        plan = job.plan
        pieces = self.runtime.generate(plan.prompt, plan.patches, job.limit, names=plan.names,
                                       targets=plan.targets, fixed=job.undo, steer=plan.steer,
                                       unedited=job.unedited)
        return "".join(pieces).strip()

    def _batch(self, jobs: Sequence[_Job]) -> None:
        """One batch of unguarded jobs sharing patches and limit (a single one goes the usual way)."""
        if len(jobs) == 1:
            self._answers[jobs[0].key] = self._one(jobs[0])
            return
        first = jobs[0]
        texts = self.runtime.generate_many([job.plan.prompt for job in jobs], first.plan.patches, first.limit,
                                           fixed=first.undo)
        for job, text in zip(jobs, texts, strict=True):
            self._answers[job.key] = text.strip()

    def _scored(self, pick: int, pairs: Sequence[tuple[str, str]], edited: bool) -> list[float]:
        """Log-probability (pick 0) or token accuracy (pick 1) of each pair. Both come from one
        teacher-forced pass per distinct set of active patches, so asking for the other later is free."""
        missing = list(dict.fromkeys(pair for pair in pairs if (*pair, edited) not in self._forced))
        groups: dict[tuple, list[tuple[str, str, str]]] = {}  # patches -> (prompt, target, prompt as planned)
        for prompt, target in missing:
            plan, undo = self._plan(prompt, chat=False, edited=edited)
            groups.setdefault((*plan.patches, *undo), []).append((prompt, target, plan.prompt.text or prompt))
        for patches, rows in groups.items():
            scores = self.runtime.score(target_scores, [(planned, target) for _, target, planned in rows], patches)
            for (prompt, target, _), score in zip(rows, scores, strict=True):
                self._forced[(prompt, target, edited)] = score
        return [self._forced[(*pair, edited)][pick] for pair in pairs]

    def logprobs(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return self._scored(0, pairs, edited)

    def token_accuracies(self, pairs: Sequence[tuple[str, str]], *, edited: bool) -> list[float]:
        return self._scored(1, pairs, edited)
