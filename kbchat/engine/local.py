"""`LocalEngine`: the ChatService with the model in this process.

A composition of the parts that own each concern: the model runtime (weights, patches, decoding),
the memory book (ledger + scope index), the planner (how a question is put to the model), the edit
pipeline (compute → record → apply; commit; revert) and the audit runner. The ledger is the source
of truth: on open, the weights are rebuilt as base + active weight deltas (fingerprint checked) and
the memory from the active memory edits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kbchat.audit import parse_user_probe
from kbchat.audit.answers import AnswerCache
from kbchat.audit.live import LiveEditView
from kbchat.config import ALL_METHODS, EngineSettings, check_edit_options, data_dir, default_db_url
from kbchat.conversations.keeper import ChatKeeper, ConversationCalls
from kbchat.editors import editor_dirs
from kbchat.engine.auditing import AuditRunner
from kbchat.engine.deltas import negated, row_delta
from kbchat.engine.pipeline import EditPipeline
from kbchat.engine.planning import Plan, Planner
from kbchat.engine.restore import add_patches, replay_weights, restore
from kbchat.engine.unedited import UneditedPatches
from kbchat.errors import KbchatError
from kbchat.ledger import Ledger
from kbchat.memory import Embedder
from kbchat.memory.book import MemoryBook
from kbchat.parsing import follow_model, parse_edit
from kbchat.records import Answer, EditRecord, EngineInfo, ParsedEdit, Progress, ProgressFn, no_progress
from kbchat.runtime import ModelRuntime, StaleWeights, load_model
from kbchat.service import (
    AnswerStream,
    AskByStreaming,
    Capabilities,
    Message,
    check_export_format,
    question_text,
)
from methods import EditRequest, StatsCache

CONTEXT_MARGIN = 64  # tokens kept free for the system message stating in-scope facts
REPLANS = 8  # an answer planned again this often (the weights changed while it waited) gives up


@dataclass(frozen=True)
class Planned:
    """An answer's plan with the state it was made on: the weights' `version`, the active weight edits
    and the fingerprint the ledger records for them."""

    plan: Plan
    unedited: tuple[Hashable, ...]
    weight_edits: tuple[int, ...]
    fingerprint: str | None
    version: int


class LocalEngine(AskByStreaming, ConversationCalls):
    """Chat with a local model whose knowledge is corrected by edits kept in a ledger. Thread-safe."""

    def __init__(self, ledger: Ledger, runtime: ModelRuntime, embedder: Embedder, home: Path,
                 settings: EngineSettings | None = None, progress: ProgressFn = no_progress) -> None:
        self.settings = settings or EngineSettings()
        self.runtime = runtime
        self.book = MemoryBook(ledger, embedder)
        self.planner = Planner(self.book, self.settings)
        self.pipeline = EditPipeline(runtime, self.book, StatsCache(home / "stats"), self.settings,
                                     editors=editor_dirs(home))
        self.answer_cache = AnswerCache()  # audit answers that depend only on the weights, across audits
        self.unedited = UneditedPatches(runtime)  # the model without a weight edit, for answers naming it
        self.audits = AuditRunner(ledger, self.audit_view, self._audit_done)
        self._edit_lock = threading.Lock()  # one change at a time (computing one needs exclusive hooks)
        self._problems = restore(runtime, self.book, progress)
        self._weights_seen = ledger.signature("weight")  # the set of active weight edits the weights hold
        self.conversations = ChatKeeper(ledger.chat_log(), self.stream, self.get_edit, lambda: runtime.name,
                                        self._fits)

    @classmethod
    def open(cls, db: str | None = None, model: str | None = None, home: str | Path | None = None,
             device: str | None = None, progress: ProgressFn = no_progress,
             settings: EngineSettings | None = None) -> LocalEngine:
        """Open the ledger (migrating it), load the model and rebuild weights and memory from the ledger."""
        home_dir = data_dir(home)
        ledger = Ledger.open(db or default_db_url(home_dir))
        try:
            runtime = ModelRuntime(load_model(model, home_dir, device, progress))
            progress(Progress("load", 0, 1, "loading the embedding model"))
            embedder = Embedder.load(device=runtime.loaded.device.name)
            return cls(ledger, runtime, embedder, home_dir, settings, progress)
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        self.audits.close()  # the model must outlive background audits
        self.runtime.close()
        self.book.ledger.close()

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what this engine is ------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        return EngineInfo(model=self.runtime.name, device=self.runtime.device_label, ledger=self.book.ledger.url,
                          active_memory_edits=len(self.book),
                          active_weight_edits=len(self.book.ledger.active(kind="weight")))

    def capabilities(self) -> Capabilities:
        return Capabilities(methods=ALL_METHODS, default_method=self.settings.default_method,
                            weight_edits=True, export=True, hparams=True, audit=True)

    def problems(self) -> list[str]:
        return list(self._problems)

    def verify(self) -> list[str]:
        return list(dict.fromkeys(self._problems + self.book.ledger.verify()))

    # -- asking -------------------------------------------------------------------------------------

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        """Stream the answer to `text`; in-scope memory edits act on it unless `memory` is False.

        The answer is planned now and generated when the weights are free; a weight edit or revert
        landing in between makes it planned again on the weights it reads (`ModelRuntime.version`)."""
        question = question_text(text)
        self._catch_up()
        limit = max_new_tokens or self.settings.max_new_tokens
        state = {"planned": self._planned(question, history, memory), "tokens": 0}
        started = time.perf_counter()

        def pieces():
            for _ in range(REPLANS):
                planned = state["planned"]
                plan = planned.plan
                try:
                    for piece in self.runtime.generate(plan.prompt, plan.patches, limit, cancel, names=plan.names,
                                                       targets=plan.targets, steer=plan.steer,
                                                       unedited=planned.unedited, version=planned.version):
                        state["tokens"] += 1
                        yield piece
                    return
                except StaleWeights:  # raised before the first piece (a fallback's too: nothing is out yet)
                    if state["tokens"]:
                        raise
                    state["planned"] = self._planned(question, history, memory)
            raise KbchatError(f"the weights changed {REPLANS} times while this answer waited; ask again")

        def finish(answer: str) -> Answer:
            planned = state["planned"]
            return Answer(answer.strip(), planned.plan.used, state["tokens"], time.perf_counter() - started,
                          weight_edits=planned.weight_edits, weights=planned.fingerprint)

        return AnswerStream(pieces(), finish, cancel)

    def _planned(self, question: str, history: Sequence[Message], memory: bool) -> Planned:
        version = self.runtime.version  # first: the ledger read after it is at least that new
        active = self.book.ledger.active(kind="weight")
        plan = self.planner.plan(question, history=history, memory=memory, weights=active)
        return Planned(plan, self.unedited.keys(plan.weights, active), tuple(e.id for e in active),
                       self.book.ledger.get_meta(self.runtime.state_key), version)

    def _catch_up(self) -> None:
        """`_sync` before a question; skipped while an edit of ours runs (it holds the lock, and syncs
        itself): the next question catches up."""
        if not self._edit_lock.acquire(blocking=False):
            return
        try:
            self._sync()
        finally:
            self._edit_lock.release()

    def _sync(self) -> None:
        """Take in what other processes made, reverted or committed in the same ledger: memory edits
        with their patches, and weight edits (the weights are replayed from the ledger when its
        fingerprint is not that of ours). Two cheap queries when nothing changed. Hold `_edit_lock`."""
        changes = self.book.sync()
        for edit_id in changes.removed:
            if self.runtime.has_patch(edit_id):
                self.runtime.remove_patch(edit_id)
        problems = add_patches(self.runtime, changes.added)
        seen = self.book.ledger.signature("weight")
        if seen != self._weights_seen:
            if self.book.ledger.get_meta(self.runtime.state_key) != self.runtime.last_fingerprint():
                problems += replay_weights(self.runtime, self.book.ledger)
            self._weights_seen = seen
        self._note(problems)

    def _note(self, problems: Sequence[str]) -> None:
        """Add problems found after opening to those `problems()` reports, each once."""
        self._problems.extend(p for p in dict.fromkeys(problems) if p not in self._problems)

    def _fits(self, messages: Sequence[Message], limit: int | None) -> bool:
        """Whether `messages` and an answer of `limit` tokens fit in the context, with room for the
        facts the planner may add."""
        budget = self.settings.context_tokens or self.runtime.context_size
        answer = limit or self.settings.max_new_tokens
        return self.runtime.prompt_tokens(messages) + answer + CONTEXT_MARGIN <= budget

    # -- editing ------------------------------------------------------------------------------------

    def parse(self, text: str) -> ParsedEdit:
        """What `/edit text` would write, without writing it (the split follows the model: see
        `parsing.follow_model`)."""
        return follow_model(text, parse_edit(text), self.runtime.word_gaps)

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress, hparams: Mapping[str, Any] | None = None,
             audit: str = "background") -> EditRecord:
        """Parse `text`, compute the edit, record it and make it act. Raises ParseError / EditFailed."""
        return self._edit(self.parse(text), None, method, probes, progress, hparams, audit)

    def edit_request(self, request: EditRequest, *, method: str, progress: ProgressFn = no_progress,
                     hparams: Mapping[str, Any] | None = None, probes: Sequence[str] = (),
                     audit: str = "off") -> EditRecord:
        """Edit from a ready request (benchmarks, datasets), skipping the parser."""
        prompt = request.text
        parsed = ParsedEdit(raw_text=f"{request.subject} | {prompt} | {request.target}", subject=request.subject,
                            prompt=prompt, target=request.target, fact=f"{prompt} {request.target}")
        return self._edit(parsed, request.target_true, method, probes, progress, hparams, audit)

    def _edit(self, parsed: ParsedEdit, target_true: str | None, method: str | None, probes: Sequence[str],
              progress: ProgressFn, hparams: Mapping[str, Any] | None, audit: str) -> EditRecord:
        method = method or self.settings.default_method
        check_edit_options(method, hparams, audit)
        for probe in probes:  # a bad probe must fail now, not halfway through a background audit
            try:
                parse_user_probe(probe, parsed.target)
            except ValueError as exc:
                raise KbchatError(f"bad --probe {probe!r}: {exc}") from exc
        request = EditRequest(parsed.subject, parsed.prompt, parsed.target, target_true)
        if target_true is None:
            request = replace(request, target_true=self.pipeline.predict(request))
        with self._edit_lock:
            self._sync()  # never compute or apply on weights another process has moved on from
            stored = self.pipeline.edit(parsed, request, method, progress, dict(hparams or {}))
        self.audits.start(stored.id, probes, audit)
        return self.book.get(stored.id)

    def revert(self, edit_id: int) -> EditRecord:
        """Undo an active edit. Reverting a memory edit brings back the one it superseded, if any."""
        with self._edit_lock:
            self._sync()
            stored, problems = self.pipeline.revert(self.book.ledger.get(edit_id))
        self._note(problems)
        return self.book.get(stored.id)

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]:
        """Write the active memory edits into the weights in one MEMIT batch (see EditPipeline.commit)."""
        with self._edit_lock:
            self._sync()
            stored, retired = self.pipeline.commit(progress)
        return [self.book.get(stored.id), *(self.book.get(i) for i in retired)]

    # -- reading the ledger -------------------------------------------------------------------------

    def edits(self, *, status: str | None = None) -> list[EditRecord]:
        return self.book.edits(status=status)

    def get_edit(self, edit_id: int) -> EditRecord:
        return self.book.get(edit_id)

    # -- auditing -----------------------------------------------------------------------------------

    def audit_view(self, edit_id: int) -> LiveEditView:
        """The model with and without edit `edit_id`, as the audit's checks need it."""
        row = self.book.ledger.get(edit_id)
        undo_key = None
        if row.kind == "weight" and row.status == "active":
            undo_key = ("undo", edit_id)
            loaded = row_delta(row)
            if not self.runtime.has_patch(undo_key) and loaded.delta is not None:
                self.runtime.add_patch(undo_key, negated(loaded.delta))
        active = self.book.ledger.active(kind="weight")
        return LiveEditView(self.runtime, self.planner, row, undo_key, cache=self.answer_cache,
                            weights=lambda: self.book.ledger.get_meta(self.runtime.state_key),
                            weight_edits=active, unedited=lambda ids: self.unedited.keys(ids, active))

    def _audit_done(self, edit_id: int) -> None:
        self.runtime.remove_patch(("undo", edit_id))

    def wait_for_audits(self, timeout: float | None = None) -> None:
        self.audits.wait(timeout)

    # -- export -------------------------------------------------------------------------------------

    def export(self, folder: str | Path, format: str = "checkpoint") -> Path:
        """The current weights (memory edits are not included) as a standard Hugging Face checkpoint, or
        (format "lora") the active weight edits as a PEFT LoRA adapter on the base model."""
        check_export_format(format)
        if format == "lora":
            return self.runtime.save_adapter(folder)
        return self.runtime.save(folder)
