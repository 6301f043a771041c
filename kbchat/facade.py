"""`KnowledgeChat`: the one facade behind the CLI, the TUI and the server.

The ledger is the source of truth. On open, the model is rebuilt as base weights + active weight
deltas (in ledger order, fingerprint verified) and the memory (scope index + in-model patches) from
the active memory edits. Every change is computed first, then written to the ledger in one
transaction, and only then made visible; a failure at any step leaves weights, index and ledger as
they were.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import methods
from kbchat.audit import parse_user_probe
from kbchat.config import ALL_METHODS, MEMORY_METHODS, data_dir, default_db_url, method_kind
from kbchat.errors import EditFailed, KbchatError, LedgerError
from kbchat.ike import IkeDemos, ike_prompt
from kbchat.ledger import Ledger, NewEdit, StoredEdit
from kbchat.memory import Embedder, key_text_for
from kbchat.memory.active import ActiveMemory, fact_of, facts_message
from kbchat.parsing import parse_edit
from kbchat.records import Answer, EditRecord, EngineInfo, ParsedEdit, Progress, ProgressFn, no_progress
from kbchat.runtime.decoding import chat_input_ids, completion_input_ids, next_word_gaps, stream_tokens
from kbchat.runtime.loading import LoadedModel, load_model
from kbchat.runtime.locks import ReadWriteLock
from kbchat.runtime.weights import WeightState
from kbchat.service import AnswerStream, Message
from kbchat.views import LiveEditView, negated, run_audit
from methods import Delta, EditRequest, StatsCache
from methods.scoped import ScopedDeltas

DEFAULT_MAX_NEW_TOKENS = 80
COMMIT_METHOD = "memit"
AGREES = -0.5  # a word within this log-prob of the model's top choice is what the model would say


class AuditStopped(Exception):
    """Raised inside a background audit when the facade closes."""


@dataclass(frozen=True)
class Plan:
    """What the model is given for one text: a raw prompt or chat messages, plus the memory in play."""

    prompt: str | None  # raw completion text (None for chat)
    messages: list[dict[str, str]] | None  # chat messages (None for raw completion)
    stops: tuple[str, ...]
    used: tuple[int, ...]  # every in-scope memory edit
    select: tuple[int, ...]  # the serac patches to switch on


@dataclass(frozen=True)
class Settings:
    default_method: str = "serac"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    # Also state in-scope serac facts, quoted, in a system message: models that follow context use
    # them; the in-model patch carries the edit for those (like the default) that do not.
    quote_facts: bool = True
    ike_demos: int = 16


class KnowledgeChat:
    """Chat with a model whose knowledge is corrected by edits kept in a ledger. Thread-safe."""

    def __init__(self, ledger: Ledger, loaded: LoadedModel, embedder: Embedder, home: Path,
                 settings: Settings | None = None, progress: ProgressFn = no_progress) -> None:
        self.ledger = ledger
        self.loaded = loaded
        self.embedder = embedder
        self.home = home
        self.settings = settings or Settings()
        self.stats = StatsCache(home / "stats")
        self.problems: list[str] = []  # integrity problems found on open: reported, never ignored
        self._lock = ReadWriteLock()
        self._edit_lock = threading.Lock()  # one edit at a time (computing one needs exclusive hooks)
        self._weights = WeightState(loaded.model)
        self._scoped = ScopedDeltas(loaded.model)
        self._memory = ActiveMemory(embedder)
        self._ike: IkeDemos | None = None
        self._base_fingerprint: str | None = None
        self._audits: list[threading.Thread] = []
        self._closing = threading.Event()
        self._restore(progress)

    # ----------------------------------------------------------------------------- opening / closing

    @classmethod
    def open(cls, db: str | None = None, model: str | None = None, home: str | Path | None = None,
             device: str | None = None, progress: ProgressFn = no_progress,
             settings: Settings | None = None) -> KnowledgeChat:
        """Open the ledger (migrating it), load the model and rebuild weights and memory from the ledger."""
        home_dir = data_dir(home)
        ledger = Ledger.open(db or default_db_url(home_dir))
        try:
            loaded = load_model(model, home_dir, device, progress)
            progress(Progress("load", 0, 1, "loading the embedding model"))
            embedder = Embedder.load(device=loaded.device.name)
            return cls(ledger, loaded, embedder, home_dir, settings, progress)
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        # Background audits stop after their current check; the model must outlive them.
        self._closing.set()
        self.wait_for_audits()
        self._scoped.close()
        self.ledger.close()

    def __enter__(self) -> KnowledgeChat:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def info(self) -> EngineInfo:
        return EngineInfo(
            model=self.loaded.name,
            device=f"{self.loaded.device.name} ({str(self.loaded.device.dtype).removeprefix('torch.')})",
            ledger=self.ledger.url,
            active_memory_edits=len(self._memory),
            active_weight_edits=len(self.ledger.active(kind="weight")),
        )

    def _restore(self, progress: ProgressFn) -> None:
        weight_rows = self.ledger.active(kind="weight")
        deltas = []
        for row in weight_rows:
            delta = self._delta_of(row)
            if delta is not None:
                deltas.append(delta)
        if deltas:
            progress(Progress("replay", 0, len(deltas), f"replaying {len(deltas)} weight edit(s)"))
            self._weights.rebuild(deltas)
            self._check_state()
        memory_rows = self.ledger.active(kind="memory")
        if memory_rows:
            progress(Progress("memory", 0, len(memory_rows), f"indexing {len(memory_rows)} memory edit(s)"))
            self._index_memory(memory_rows)

    def _delta_of(self, row: StoredEdit) -> Delta | None:
        """The row's delta, or None (with a problem reported) when it is missing or corrupt."""
        if row.delta is None or hashlib.sha256(row.delta).hexdigest() != row.delta_sha256:
            self._problem(f"edit #{row.id}: stored delta is missing or corrupt; it was not applied "
                          f"(revert it with `kbchat revert {row.id}`)")
            return None
        try:
            return Delta.from_bytes(row.delta)
        except ValueError as exc:
            self._problem(f"edit #{row.id}: {exc}; it was not applied")
            return None

    def _problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def _index_memory(self, rows: Sequence[StoredEdit]) -> None:
        self._memory.load(rows)
        for r in rows:
            if r.method == "serac" and (delta := self._delta_of(r)) is not None:
                self._scoped.add(r.id, delta)

    # ----------------------------------------------------------------------------- integrity

    def base_fingerprint(self) -> str:
        """Fingerprint of the weights as loaded (before any delta); computed once, when first needed."""
        if self._base_fingerprint is None:
            active = self._active_deltas()  # exactly what _restore applied
            if not active:
                with self._lock.read():
                    self._base_fingerprint = self._weights.fingerprint()
            else:  # weights carry deltas: fingerprint the base by rebuilding it briefly
                with self._lock.write():
                    self._weights.rebuild([])
                    self._base_fingerprint = self._weights.fingerprint()
                    self._weights.rebuild(active)
        return self._base_fingerprint

    def _state_key(self) -> str:
        dev = self.loaded.device
        return f"weights:{self.loaded.name}:{dev.name.split(':')[0]}:{str(dev.dtype).removeprefix('torch.')}"

    def _check_state(self) -> None:
        """Compare the rebuilt weights with the fingerprint the ledger expects for them."""
        actual = self._weights.fingerprint()
        expected = self.ledger.get_meta(self._state_key())
        if expected is None:
            self.ledger.set_meta(self._state_key(), actual)
        elif expected != actual:
            self._problem(
                f"weights after replaying the ledger do not match its fingerprint ({actual[:12]} != "
                f"{expected[:12]}): the base model changed or a delta was altered; see `kbchat verify`"
            )

    def verify(self) -> list[str]:
        """Everything wrong with the ledger and the running weights, one line each (empty: all good)."""
        return list(dict.fromkeys(self.problems + self.ledger.verify()))

    # ----------------------------------------------------------------------------- asking

    def retrieve(self, question: str, exclude: frozenset[int] = frozenset()) -> list[StoredEdit]:
        """Active memory edits in scope for `question`, best first (minus `exclude`)."""
        return self._memory.retrieve(question, exclude)

    def plan(self, text: str, *, chat: bool = True, memory: bool = True,
             exclude: frozenset[int] = frozenset()) -> Plan:
        """How `text` is put to the model: a chat question (chat=True) or a raw prompt to continue.

        In-scope serac edits are selected as in-model patches (and, for chat, quoted in a system
        message); in-scope ike edits turn the input into IKE's completion-format prompt.
        """
        used = self.retrieve(text, exclude) if memory else []
        serac = tuple(r.id for r in used if r.method == "serac")
        if any(r.method == "ike" for r in used):
            facts = [fact_of(r) for r in used]
            demos = self._ike_demos().select(facts[0], self.settings.ike_demos)
            return Plan(ike_prompt(facts, text, demos), None, ("\n",), tuple(r.id for r in used), serac)
        if not chat:
            return Plan(text, None, (), tuple(r.id for r in used), serac)
        messages = [{"role": "user", "content": text}]
        if serac and self.settings.quote_facts:
            messages = [facts_message([r for r in used if r.method == "serac"]), *messages]
        return Plan(None, messages, (), tuple(r.id for r in used), serac)

    def ask(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
            max_new_tokens: int | None = None) -> Answer:
        return self.stream(text, history=history, memory=memory, max_new_tokens=max_new_tokens).result()

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        """Stream the answer to `text`; in-scope memory edits act on it unless `memory` is False."""
        question = " ".join(text.split())
        if not question:
            raise KbchatError("empty question: type something to ask")
        plan = self.plan(question, memory=memory)
        if plan.messages is not None:
            plan = replace(plan, messages=[*(dict(m) for m in history), *plan.messages])
        return self._stream_plan(plan, max_new_tokens or self.settings.max_new_tokens, cancel)

    def _stream_plan(self, plan: Plan, limit: int, cancel: threading.Event | None = None,
                     select: Sequence = ()) -> AnswerStream:
        device = self.loaded.device.name
        if plan.messages is not None:
            input_ids = chat_input_ids(self.tokenizer, plan.messages, device)
        else:
            input_ids = completion_input_ids(self.tokenizer, plan.prompt, device)
        started = time.perf_counter()
        counter = {"tokens": 0}

        def pieces():
            with self._lock.read(), self._scoped.select([*plan.select, *select]):
                for piece in stream_tokens(self.model, self.tokenizer, input_ids, limit, cancel, plan.stops):
                    counter["tokens"] += 1
                    yield piece

        def finish(answer: str) -> Answer:
            return Answer(answer.strip(), plan.used, counter["tokens"], time.perf_counter() - started)

        return AnswerStream(pieces(), finish, cancel)

    def _ike_demos(self) -> IkeDemos:
        if self._ike is None:
            self._ike = IkeDemos.load(self.embedder)
        return self._ike

    # ----------------------------------------------------------------------------- editing

    def parse(self, text: str) -> ParsedEdit:
        """What `/edit text` would write, without writing it.

        The grammatical split (after "is located in", "was founded by", ...) is moved right past any
        words the model itself would say there: the target starts where the fact departs from what the
        model predicts ("plays for | the Chicago Bulls" becomes "plays for the | Chicago Bulls").
        """
        parsed = parse_edit(text)
        if "|" in text and not any(arrow in text for arrow in ("→", "->", "=>")):
            return parsed  # the explicit form: the user chose the split
        start = len(parsed.prompt) + 1
        words = [m.start() for m in re.finditer(r"\S+", parsed.fact) if m.start() >= start]
        if len(words) < 2:
            return parsed
        with self._lock.read():
            gaps = next_word_gaps(self.model, self.tokenizer, parsed.fact, words[:-1])
        split = start
        for offset, gap in zip(words[:-1], gaps, strict=True):
            if gap < AGREES:
                break
            split = words[words.index(offset) + 1]
        if split == start:
            return parsed
        target = parsed.fact[split:].rstrip(" .!?;:")
        return replace(parsed, prompt=parsed.fact[:split].rstrip(), target=target)

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress, hparams: Mapping | None = None,
             audit: str = "background") -> EditRecord:
        """Parse `text`, compute the edit, record it and make it act. Raises ParseError / EditFailed.

        `audit`: "background" (checks fill in as they finish), "wait" (return after them) or "off".
        """
        return self._edit(self.parse(text), None, method, probes, progress, hparams, audit)

    def edit_request(self, request: EditRequest, *, method: str, progress: ProgressFn = no_progress,
                     hparams: Mapping | None = None, probes: Sequence[str] = (), audit: str = "off") -> EditRecord:
        """An edit from a ready request (benchmarks, the server), skipping the parser."""
        prompt = request.text
        parsed = ParsedEdit(raw_text=f"{request.subject} | {prompt} | {request.target}", subject=request.subject,
                            prompt=prompt, target=request.target, fact=f"{prompt} {request.target}")
        return self._edit(parsed, request.target_true, method, probes, progress, hparams, audit)

    def _edit(self, parsed: ParsedEdit, target_true: str | None, method: str | None, probes: Sequence[str],
              progress: ProgressFn, hparams: Mapping | None, audit: str) -> EditRecord:
        method = method or self.settings.default_method
        if method not in ALL_METHODS:
            raise KbchatError(f"unknown method {method!r}; choose one of: {', '.join(ALL_METHODS)}")
        if audit not in ("background", "wait", "off"):
            raise KbchatError(f"unknown audit mode {audit!r}")
        if hparams and method in MEMORY_METHODS and method != "serac":
            raise KbchatError(f"{method} takes no hyperparameters")
        for probe in probes:  # a bad probe must fail now, not halfway through a background audit
            try:
                parse_user_probe(probe, parsed.target)
            except ValueError as exc:
                raise KbchatError(f"bad --probe {probe!r}: {exc}") from exc
        request = EditRequest(parsed.subject, parsed.prompt, parsed.target,
                              target_true or self._predict(parsed.prompt))
        with self._edit_lock:
            if method in MEMORY_METHODS:
                stored = self._memory_edit(parsed, request, method, progress, dict(hparams or {}))
            else:
                stored = self._weight_edit(parsed, request, method, progress, dict(hparams or {}))
        self._start_audit(stored.id, probes, audit)
        return stored.record(self.ledger.checks(stored.id))

    # ----------------------------------------------------------------------------- auditing

    def audit_view(self, edit_id: int) -> LiveEditView:
        """The model with and without edit `edit_id`, as the audit's checks need it."""
        row = self.ledger.get(edit_id)
        undo_key = None
        if row.kind == "weight" and row.status == "active":
            undo_key = ("undo", edit_id)
            if undo_key not in self._scoped and (delta := self._delta_of(row)) is not None:
                self._scoped.add(undo_key, negated(delta))
        return LiveEditView(self, row, undo_key)

    def _start_audit(self, edit_id: int, probes: Sequence[str], mode: str) -> None:
        if mode == "off":
            return

        def store(check) -> None:
            if self._closing.is_set():
                raise AuditStopped
            self.ledger.add_checks(edit_id, [check])

        def work() -> None:
            try:
                run_audit(self.audit_view(edit_id), probes, store)
            except AuditStopped:
                pass  # closing: the checks stored so far stay
            except Exception as exc:  # a background audit must never take the app down; say why it stopped
                self.ledger.set_status(edit_id, self.ledger.get(edit_id).status, notes=f"audit stopped: {exc}")
            finally:
                self._scoped.remove(("undo", edit_id))

        if mode == "wait":
            work()
        else:
            thread = threading.Thread(target=work, name=f"audit-{edit_id}", daemon=True)
            self._audits.append(thread)
            thread.start()

    def wait_for_audits(self, timeout: float | None = None) -> None:
        for thread in list(self._audits):
            thread.join(timeout)
        self._audits = [t for t in self._audits if t.is_alive()]

    def _predict(self, prompt: str) -> str | None:
        """The model's own continuation of the prompt (a few words): the fact being replaced."""
        with self._lock.read():
            ids = completion_input_ids(self.tokenizer, prompt, self.loaded.device.name)
            text = "".join(stream_tokens(self.model, self.tokenizer, ids, 6, None, ("\n", ".", ",")))
        return text.strip() or None

    def _memory_edit(self, parsed: ParsedEdit, request: EditRequest, method: str,
                     progress: ProgressFn, hparams: dict) -> StoredEdit:
        delta = None
        if method == "serac":  # the counterfactual model: a ROME patch switched on only in scope
            delta = self._compute("rome", [request], progress, hparams)
        vector = self.embedder.embed([key_text_for(parsed.subject, parsed.prompt, parsed.target)])[0]
        supersede = self._memory.superseded_by(parsed)
        new = self._new_edit(parsed, request, method, delta, embedding=vector.astype("float32").tobytes())
        stored = self._record(new, supersede=supersede)
        for old in supersede:
            self._forget(old)
        self._memory.add(stored, vector)
        if delta is not None:
            self._scoped.add(stored.id, delta)
        return stored

    def _weight_edit(self, parsed: ParsedEdit, request: EditRequest, method: str, progress: ProgressFn,
                     hparams: dict) -> StoredEdit:
        prior = self._active_deltas() if method == "alphaedit" else []
        delta = self._compute(method, [request], progress, hparams, prior=prior)
        return self._commit_delta(self._new_edit(parsed, request, method, delta), delta)

    def _compute(self, method: str, requests: Sequence[EditRequest], progress: ProgressFn, hparams: dict,
                 prior: Sequence[Delta] = ()) -> Delta:
        impl = methods.get(method)
        options: dict = {"progress": _method_progress(progress)}
        if impl.uses_statistics:
            options.update(stats=self.stats, model_id=self.base_fingerprint())
        if impl.protects_prior:
            options["prior"] = prior
        try:
            hp = impl.hparams_from_dict(self.model, hparams) if hparams else None
        except TypeError as exc:
            raise KbchatError(str(exc)) from exc
        try:
            with self._lock.write():  # the computation hooks the model: no answer may run meanwhile
                return impl.compute(self.model, self.tokenizer, list(requests), hp, **options)
        except KbchatError:
            raise
        except Exception as exc:  # a failed optimisation must not leave anything behind
            raise EditFailed(f"{method} could not compute the edit: {exc}") from exc

    def _commit_delta(self, new: NewEdit, delta: Delta, retire: Sequence[int] = ()) -> StoredEdit:
        """Apply a weight delta and record it; on any failure the weights are restored exactly."""
        with self._lock.write():
            before = self._weights.fingerprint()
            applied = self._weights.apply(delta)
            try:
                after = self._weights.fingerprint()
                stored = self._record(
                    NewEdit(**{**vars(new), "weights_before": before, "weights_after": after}), retire=retire
                )
                self.ledger.set_meta(self._state_key(), after)
            except BaseException:
                applied.undo()
                raise
        return stored

    def _new_edit(self, parsed: ParsedEdit, request: EditRequest, method: str, delta: Delta | None,
                  embedding: bytes | None = None) -> NewEdit:
        return NewEdit(
            raw_text=parsed.raw_text,
            subject=parsed.subject,
            prompt=parsed.prompt,
            relation=parsed.relation,
            target=parsed.target,
            target_true=request.target_true,
            method=method,
            kind=method_kind(method),
            hparams=delta.meta if delta is not None else None,
            delta=delta.to_bytes() if delta is not None else None,
            model_fingerprint=self.base_fingerprint() if delta is not None else None,
            embedding=embedding,
            embedder=self.embedder.name if embedding is not None else None,
        )

    def _record(self, new: NewEdit, supersede: Sequence[int] = (), retire: Sequence[int] = ()) -> StoredEdit:
        try:
            return self.ledger.record_edit(new, supersede=supersede, retire=retire)
        except LedgerError as exc:
            raise EditFailed(f"the edit was not recorded, nothing changed: {exc}") from exc

    def _forget(self, edit_id: int) -> None:
        self._memory.forget(edit_id)
        self._scoped.remove(edit_id)

    def _active_deltas(self, exclude: int | None = None) -> list[Delta]:
        rows = [r for r in self.ledger.active(kind="weight") if r.id != exclude]
        return [d for r in rows if (d := self._delta_of(r)) is not None]

    # ----------------------------------------------------------------------------- reverting

    def revert(self, edit_id: int) -> EditRecord:
        """Undo an active edit. Reverting a memory edit brings back the one it superseded, if any."""
        with self._edit_lock:
            row = self.ledger.get(edit_id)
            if row.status != "active":
                raise KbchatError(f"edit #{edit_id} is {row.status}; only active edits can be reverted")
            if row.kind == "memory":
                stored = self.ledger.set_status(edit_id, "reverted")
                self._forget(edit_id)
                revived = [r for r in self.ledger.edits(status="superseded", kind="memory")
                           if r.superseded_by == edit_id]
                for old in revived:
                    self.ledger.set_status(old.id, "active", notes=f"active again: #{edit_id} was reverted")
                if revived:
                    self._index_memory([self.ledger.get(r.id) for r in revived])
            else:
                stored = self._revert_weights(row)
                self._scoped.remove(("undo", edit_id))  # the audit's "before" patch, if one was made
        return stored.record(self.ledger.checks(edit_id))

    def _revert_weights(self, row: StoredEdit) -> StoredEdit:
        active = self.ledger.active(kind="weight")
        newest = active[-1].id == row.id
        later = [r for r in active if r.id > row.id]
        with self._lock.write():
            remaining = self._active_deltas(exclude=row.id)
            self._weights.rebuild(remaining)
            after = self._weights.fingerprint()
            if newest and row.weights_before and after != row.weights_before:
                self._problem(f"revert of #{row.id}: weights differ from those recorded before it")
            note = ("reverted: the weights are exactly those before the edit" if newest and after == row.weights_before
                    else f"reverted out of order: its delta was removed from under {len(later)} later edit(s), "
                         "which were computed with it applied")
            stored = self.ledger.set_status(row.id, "reverted", notes=note)
            self.ledger.set_meta(self._state_key(), after)
        for r in later:
            self.ledger.set_status(r.id, "active", notes=f"computed with #{row.id} applied; #{row.id} was reverted later")
        return stored

    # ----------------------------------------------------------------------------- committing

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]:
        """Write the active memory edits into the weights in one MEMIT batch.

        A memory edit is retired (status 'committed') only if, from the weights alone, its prompt now
        yields its target; the others stay active as memory.
        """
        with self._edit_lock:
            rows = self._memory.rows()
            if not rows:
                raise KbchatError("no active memory edits to commit")
            requests = [EditRequest(r.subject, r.prompt, r.target, r.target_true) for r in rows]
            delta = self._compute(COMMIT_METHOD, requests, progress, {})
            with self._lock.write():
                applied = self._weights.apply(delta)
                passing = [r.id for r, req in zip(rows, requests, strict=True) if self._says(req)]
                applied.undo()
            if not passing:
                raise EditFailed("commit failed its reliability check: no edit's prompt yields its target "
                                 "from the weights; the memory edits stay active")
            ids = ", ".join(f"#{i}" for i in passing)
            new = NewEdit(
                raw_text=f"commit of memory edits {ids}",
                subject="; ".join(r.subject for r in rows),
                prompt="; ".join(r.prompt for r in rows),
                relation="(batch)",
                target="; ".join(r.target for r in rows),
                method=COMMIT_METHOD,
                kind="weight",
                hparams=delta.meta,
                delta=delta.to_bytes(),
                model_fingerprint=self.base_fingerprint(),
                notes=f"committed memory edits {ids}",
            )
            stored = self._commit_delta(new, delta, retire=passing)
            for edit_id in passing:
                self._forget(edit_id)
        return [stored.record(self.ledger.checks(stored.id))] + [
            self.ledger.get(i).record(self.ledger.checks(i)) for i in passing
        ]

    def _says(self, request: EditRequest) -> bool:
        ids = completion_input_ids(self.tokenizer, request.text, self.loaded.device.name)
        text = "".join(stream_tokens(self.model, self.tokenizer, ids, 8, None, ("\n",)))
        return request.target.lower() in text.lower()

    # ----------------------------------------------------------------------------- reading the ledger

    def edits(self, *, status: str | None = None) -> list[EditRecord]:
        return [r.record(self.ledger.checks(r.id)) for r in self.ledger.edits(status=status)]

    def get_edit(self, edit_id: int) -> EditRecord:
        return self.ledger.get(edit_id).record(self.ledger.checks(edit_id))

    # ----------------------------------------------------------------------------- export

    def export(self, folder: str | Path) -> Path:
        """A standard Hugging Face checkpoint of the current weights (memory edits are not included)."""
        target = Path(folder).expanduser()
        if target.exists() and any(target.iterdir()):
            raise KbchatError(f"{target} is not empty: choose a new folder for the export")
        with self._lock.read():
            self.model.save_pretrained(target)
            self.tokenizer.save_pretrained(target)
        return target


STAGES = {
    "value": "optimising the new value",
    "statistics": "key statistics over Wikipedia text (once per model and layer)",
    "layers": "spreading the update over layers",
    "finetune": "fine-tuning",
}


def _method_progress(progress: ProgressFn):
    """Adapt kbchat's Progress events to the methods library's callback signature."""
    def report(stage: str, step: int, total: int | None, loss: float | None = None) -> None:
        progress(Progress(stage, step, total, STAGES.get(stage, stage), loss))

    return report
