"""The edit pipeline: validate → compute (through the methods registry) → record → apply; commit;
revert. Every change is computed first, written to the ledger in one transaction, and only then
made visible; a failure at any step leaves weights, patches, index and ledger as they were."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import methods
from kbchat.audit.relations import questions
from kbchat.audit.rivals import chat_rival, raw_rival
from kbchat.config import COMMIT_METHOD, EXPERIMENTAL, MEMORY_METHODS, EngineSettings, method_kind
from kbchat.engine.deltas import row_delta
from kbchat.engine.planning import steer_for, weight_steer_for
from kbchat.engine.strength import screened_naming, strengthen
from kbchat.errors import EditFailed, KbchatError, LedgerError
from kbchat.ledger import NewEdit, StoredEdit
from kbchat.memory.active import fact_sentence, facts_message_for
from kbchat.memory.book import MemoryBook
from kbchat.records import ParsedEdit, Progress, ProgressFn
from kbchat.runtime import ModelRuntime
from kbchat.runtime.decoding import chat_text
from methods import Delta, EditRequest, StatsCache
from methods.mend import EditorNotFound, LoadedEditors
from methods.own_answer import OwnAnswer

RIVAL_TOKENS = 32
OWN_ANSWER_TOKENS = 48  # about a chat answer's first sentence or two
STAGES = {
    "value": "optimising the new value",
    "statistics": "key statistics over Wikipedia text (once per model and layer)",
    "layers": "spreading the update over layers",
    "finetune": "fine-tuning",
}


class EditPipeline:
    def __init__(self, runtime: ModelRuntime, book: MemoryBook, stats: StatsCache,
                 settings: EngineSettings, editors: Sequence[Path] = ()) -> None:
        self.runtime = runtime
        self.book = book
        self.ledger = book.ledger
        self.stats = stats
        self.settings = settings
        self.editors = tuple(editors)  # where trained editors (MEND, InstructEdit) are looked for
        self.loaded_editors = LoadedEditors()  # each loaded once (a second per edit otherwise)

    # -- making an edit -----------------------------------------------------------------------------

    def predict(self, request: EditRequest) -> str | None:
        """What the model says before the edit, the fact being replaced: the object of its chat answer
        to the relation's question, else the first words of its raw continuation of the prompt."""
        answer = self.runtime.answer(questions(request)[0], RIVAL_TOKENS)
        return chat_rival(answer, request) or raw_rival(self.runtime.complete(request.text, 6, ("\n",)))

    def edit(self, parsed: ParsedEdit, request: EditRequest, method: str, progress: ProgressFn,
             hparams: Mapping[str, Any]) -> StoredEdit:
        """Compute, record and apply one edit (the caller holds the edit lock)."""
        if method in MEMORY_METHODS:
            return self._memory_edit(parsed, request, method, progress, hparams)
        prior = self.runtime.deltas if method == "alphaedit" else ()
        delta = self.compute(method, [request], progress, hparams, prior=prior)
        if methods.get(method).editor_kind is not None:
            delta = self._chat_checked(delta, request, progress)
        return self._apply(self._new_edit(parsed, request, method, delta), delta)

    def _chat_checked(self, delta: Delta, request: EditRequest, progress: ProgressFn) -> Delta:
        """A learned editor's delta scaled by the first of `settings.editor_scales` whose chat answer to
        the relation's question (on top of the current weights, worded as weight edits are answered)
        names the target; as computed when none does but the editor's step search reached the target on
        the prompt. EditFailed (nothing changed) when neither carries the edit: applying it would leave
        the model saying what it said, with an edit in the ledger claiming otherwise."""
        if self.settings.editor_scales:
            progress(Progress("check", 0, 1, "checking the edit on the relation's question"))
        named = screened_naming(self.runtime, delta, request, self.settings.editor_scales,
                                weight_steer_for(self.settings))
        if named is not None:
            return named
        if not all(delta.meta.get("reached", (True,))):
            checked = (f", and its chat answer does not name it at any scale up to {max(self.settings.editor_scales):g}×"
                       if self.settings.editor_scales else "")
            raise EditFailed(f"{delta.method} could not carry the edit: within its drift bound the model does not "
                             f"prefer {request.target!r} on {request.text!r}{checked}; nothing was changed")
        return delta

    def _memory_edit(self, parsed: ParsedEdit, request: EditRequest, method: str, progress: ProgressFn,
                     hparams: Mapping[str, Any]) -> StoredEdit:
        # serac's counterfactual model: a ROME patch switched on only in scope, as strong as it must be.
        delta = None
        if method == "serac":
            answers = [self.own_answer(request)] if self.settings.serac_own_answer else []
            delta = self.compute("rome", [request], progress, hparams, answers=[answers])
        if delta is not None:
            progress(Progress("check", 0, 1, "checking the patch on the relation's question"))
            fact = fact_sentence(parsed.prompt, parsed.target) if self.settings.quote_facts else None
            delta = strengthen(self.runtime, delta, request, self.settings.serac_scales, fact,
                               self.settings.serac_check_wordings, self.settings.serac_check_follow_up,
                               steer_for(self.settings, facts_message_for([fact]) if fact else None))
        vector = self.book.key_vector(parsed.subject, parsed.prompt, parsed.target)
        new = self._new_edit(parsed, request, method, delta, embedding=vector.astype("float32").tobytes())
        recorded = self.book.record(new, vector)
        for old in recorded.superseded:
            self.runtime.remove_patch(old)
        if delta is not None:
            self.runtime.add_patch(recorded.edit.id, delta)
        return recorded.edit

    def own_answer(self, request: EditRequest) -> OwnAnswer:
        """The unedited model's chat answer to the relation's question, with the fact it states."""
        question = questions(request)[0]
        prompt = chat_text(self.runtime.loaded.tokenizer, [{"role": "user", "content": question}])
        return OwnAnswer(prompt, self.runtime.answer(question, OWN_ANSWER_TOKENS), request.target_true)

    def compute(self, method: str, requests: Sequence[EditRequest], progress: ProgressFn,
                hparams: Mapping[str, Any], prior: Sequence[Delta] = (),
                answers: Sequence[Sequence[OwnAnswer]] = ()) -> Delta:
        """The method's delta for `requests`; the model is unchanged afterwards (EditFailed on failure).
        `answers`: own answers to keep, per request (ROME only)."""
        impl = methods.get(method)
        options: dict[str, Any] = {"progress": method_progress(progress)}
        if answers:
            options["answers"] = answers
        if impl.uses_statistics:
            options.update(stats=self.stats, model_id=self.runtime.base_fingerprint())
        if impl.protects_prior:
            options["prior"] = list(prior)
        try:
            hp = impl.hparams_from_dict(self.runtime.loaded.model, dict(hparams)) if hparams else None
        except TypeError as exc:  # unknown or ill-typed hyperparameters
            raise KbchatError(str(exc)) from exc
        model_id = self.runtime.base_fingerprint() if impl.editor_kind is not None else None  # takes the lock
        try:
            with self.runtime.exclusive() as (model, tokenizer):
                if impl.editor_kind is not None:
                    options["editor"] = self.loaded_editors.get(model, impl.editor_kind, self.editors, model_id)
                return impl.compute(model, tokenizer, list(requests), hp, **options)
        except KbchatError:
            raise
        except EditorNotFound as exc:  # no trained editor for this model: the message says how to train one
            raise KbchatError(str(exc)) from exc
        except Exception as exc:  # a failed optimisation must not leave anything behind
            raise EditFailed(f"{method} could not compute the edit: {exc}") from exc

    def _apply(self, new: NewEdit, delta: Delta, retire: Sequence[int] = ()) -> StoredEdit:
        """Apply a weight delta and record it (with the weights' new fingerprint) in one transaction."""
        def record(before: str, after: str) -> StoredEdit:
            done = replace(new, weights_before=before, weights_after=after)
            try:
                return self.ledger.record_edit(done, retire=retire, meta={self.runtime.state_key: after})
            except LedgerError as exc:
                raise EditFailed(f"the edit was not recorded, nothing changed: {exc}") from exc

        return self.runtime.apply(delta, record)

    def _new_edit(self, parsed: ParsedEdit, request: EditRequest, method: str, delta: Delta | None,
                  embedding: bytes | None = None) -> NewEdit:
        return NewEdit(
            raw_text=parsed.raw_text, subject=parsed.subject, prompt=parsed.prompt, relation=parsed.relation,
            target=parsed.target, target_true=request.target_true, method=method, kind=method_kind(method),
            hparams=delta.meta if delta is not None else None,
            delta=delta.to_bytes() if delta is not None else None,
            model_fingerprint=self.runtime.base_fingerprint() if delta is not None else None,
            embedding=embedding, embedder=self.book.embedder.name if embedding is not None else None,
            notes=EXPERIMENTAL.get(method),
        )

    # -- committing ---------------------------------------------------------------------------------

    def commit(self, progress: ProgressFn) -> tuple[StoredEdit, list[int]]:
        """Write the active memory edits into the weights in one MEMIT batch: (the new edit, retired ids).

        A memory edit is retired (status 'committed') only if, from the weights alone, its prompt now
        yields its target; the others stay active as memory.
        """
        rows = self.book.rows()
        if not rows:
            raise KbchatError("no active memory edits to commit")
        requests = [EditRequest(r.subject, r.prompt, r.target, r.target_true) for r in rows]
        delta = self.compute(COMMIT_METHOD, requests, progress, {})
        said = self.runtime.trial(delta, [q.text for q in requests], 8)
        passing = [r.id for r, q, s in zip(rows, requests, said, strict=True) if q.target.lower() in s.lower()]
        if not passing:
            raise EditFailed("commit failed its reliability check: no edit's prompt yields its target "
                             "from the weights; the memory edits stay active")
        ids = ", ".join(f"#{i}" for i in passing)
        new = NewEdit(
            raw_text=f"commit of memory edits {ids}", subject="; ".join(r.subject for r in rows),
            prompt="; ".join(r.prompt for r in rows), relation="(batch)",
            target="; ".join(r.target for r in rows), method=COMMIT_METHOD, kind="weight", hparams=delta.meta,
            delta=delta.to_bytes(), model_fingerprint=self.runtime.base_fingerprint(),
            notes=f"committed memory edits {ids}",
        )
        stored = self._apply(new, delta, retire=passing)
        self.book.retire(passing)
        for edit_id in passing:
            self.runtime.remove_patch(edit_id)
        return stored, passing

    # -- reverting ----------------------------------------------------------------------------------

    def revert(self, row: StoredEdit) -> tuple[StoredEdit, list[str]]:
        """Undo active edit `row` in one ledger transaction: (the reverted edit, problems found)."""
        if row.status != "active":
            raise KbchatError(f"edit #{row.id} is {row.status}; only active edits can be reverted")
        if row.kind == "memory":
            result = self.book.revert(row.id)
            self.runtime.remove_patch(row.id)
            problems = []
            for again in result.revived:
                if again.method == "serac":
                    loaded = row_delta(again)
                    if loaded.delta is not None:
                        self.runtime.add_patch(again.id, loaded.delta)
                    elif loaded.problem:
                        problems.append(loaded.problem)
            return result.edit, problems
        return self._revert_weights(row)

    def _revert_weights(self, row: StoredEdit) -> tuple[StoredEdit, list[str]]:
        active = self.ledger.active(kind="weight")
        newest = active[-1].id == row.id
        later = [r.id for r in active if r.id > row.id]
        remaining = [d for r in active if r.id != row.id and (d := row_delta(r).delta) is not None]
        problems: list[str] = []

        def record(after: str) -> StoredEdit:
            exact = newest and after == row.weights_before
            if newest and row.weights_before and not exact:
                problems.append(f"revert of #{row.id}: weights differ from those recorded before it")
            note = ("reverted: the weights are exactly those before the edit" if exact
                    else f"reverted out of order: its delta was removed from under {len(later)} later edit(s), "
                         "which were computed with it applied")
            renote = {i: f"computed with #{row.id} applied; #{row.id} was reverted later" for i in later}
            return self.ledger.revert(row.id, notes=note, renote=renote,
                                      meta={self.runtime.state_key: after}).edit

        stored = self.runtime.rebuild(remaining, record)
        self.runtime.remove_patch(("undo", row.id))  # the audit's "before" patch, if one was made
        return stored, problems


def method_progress(progress: ProgressFn):
    """Adapt kbchat's Progress events to the methods library's callback signature."""
    def report(stage: str, step: int, total: int | None, loss: float | None = None) -> None:
        progress(Progress(stage, step, total, STAGES.get(stage, stage), loss))

    return report
