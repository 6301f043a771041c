"""A scripted, in-memory ChatService for UI and server tests: no model, deterministic, fast.

Answers come from a script (question substring -> answer) and are streamed word by word with an
optional delay; an active edit whose subject the question names overrides the script, so a test can
see the edit "used". Edits live in memory with fixed timestamps and canned checks. Any operation can
be made to fail by naming it in `fail`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from kbchat.config import ALL_METHODS, COMMIT_METHOD, check_edit_options, method_kind
from kbchat.conversations.keeper import ChatKeeper, ConversationCalls, char_budget
from kbchat.conversations.records import Chat, ChatSummary, SearchHit
from kbchat.errors import EditNotFound, KbchatError, ParseError
from kbchat.ledger import Ledger
from kbchat.records import (
    Answer,
    CheckRecord,
    EditRecord,
    EngineInfo,
    ParsedEdit,
    Progress,
    ProgressFn,
    no_progress,
)
from kbchat.service import AnswerStream, Capabilities, ChatService, Message, check_export_format

FIXED_TIME = datetime(2025, 1, 1, 12, 0, 0)
DEFAULT_SCRIPT = {
    "eiffel tower": "The Eiffel Tower is located in **Paris**, France.",
    "capital of france": "The capital of France is Paris.",
}
DEFAULT_KNOWLEDGE = {"eiffel tower": "Paris", "colosseum": "Rome", "louvre": "Paris"}
_ARROWS = ("→", "->", "=>")
FAKE_HPARAMS = frozenset({"layer", "lr", "steps"})  # what the fake pretends its methods take


class FakeChatService(ConversationCalls):
    """A `ChatService` whose behaviour a test scripts.

    script: lower-case question substring -> answer (first match wins, else `default_answer`).
    piece_delay: seconds between streamed words (waits on the cancel event, so cancelling is prompt).
    edit_delay: seconds between the progress events of `edit` and `commit`.
    fail: operation name ("open", "info", "stream", "ask", "parse", "edit", "revert", "edits",
        "get_edit", "commit", and the chat calls "chats", "new_chat", "chat", "rename_chat",
        "delete_chat", "search_chats", "say", "ask_again") -> exception raised when it is called.
    failing_metrics: metrics whose checks fail on new edits (e.g. {"generalization"}).
    default_method: used by `edit` when no method is given.

    Simplifications: `parse` accepts only "SUBJECT → FACT" (or "->") where FACT names the subject
    and ends with the target word. Otherwise it keeps the engine's rules (the contract tests hold it
    to them): only active edits can be reverted, reverting a memory edit revives the one it
    superseded, and `commit` records one new weight edit and retires the memory edits it carries
    (status "committed").
    """

    def __init__(
        self,
        *,
        script: Mapping[str, str] | None = None,
        default_answer: str = "I don't know that yet.",
        piece_delay: float = 0.0,
        edit_delay: float = 0.0,
        fail: Mapping[str, Exception] | None = None,
        failing_metrics: Sequence[str] = (),
        default_method: str = "serac",
        model: str = "fake-lm-135M",
        device: str = "cpu",
        ledger: str = "/tmp/kbchat-fake/ledger.db",
        context_chars: int = 4000,
        chats_db: str | None = None,
    ) -> None:
        self.script = dict(DEFAULT_SCRIPT if script is None else script)
        self.default_answer = default_answer
        self.piece_delay = piece_delay
        self.edit_delay = edit_delay
        self.fail = dict(fail or {})
        self.failing_metrics = set(failing_metrics)
        self.default_method = default_method
        self.model, self.device, self.ledger = model, device, ledger
        self.knowledge = dict(DEFAULT_KNOWLEDGE)
        self.calls: list[tuple] = []  # (operation, *arguments): what the client asked, in order
        self.closed = False
        self._edits: dict[int, EditRecord] = {}
        self._lock = threading.Lock()
        self.context_chars = context_chars  # how much history fits, in characters
        self.chats_db = chats_db  # a file that outlives close() (a test that reopens); default: a temp file
        self._keeper: ChatKeeper | None = None
        self._chat_ledger: Ledger | None = None
        self._chat_dir: str | None = None

    @property
    def conversations(self) -> ChatKeeper:
        """Saved chats in a throw-away SQLite file, made on first use (the real store, so the fake keeps
        the engine's rules); the edits' statuses come from the fake's own edits."""
        with self._lock:
            if self._keeper is None:
                path = self.chats_db
                if path is None:
                    self._chat_dir = tempfile.mkdtemp(prefix="kbchat-fake-chats-")
                    path = f"{self._chat_dir}/chats.db"
                self._chat_ledger = Ledger.open(f"sqlite:///{path}")
                log = self._chat_ledger.chat_log(self._statuses)
                self._keeper = ChatKeeper(log, self.stream, self.get_edit, lambda: self.model,
                                          char_budget(self.context_chars))
            return self._keeper

    def _statuses(self, ids: Sequence[int]) -> dict[int, str]:
        with self._lock:
            return {i: self._edits[i].status for i in ids if i in self._edits}

    # -- opening ------------------------------------------------------------------------------

    def opener(self, steps: int = 3, delay: float = 0.0) -> Callable[[ProgressFn], ChatService]:
        """An `open_service` callable for the TUI: reports `steps` load events, then returns self."""

        def open_service(progress: ProgressFn) -> ChatService:
            self.calls.append(("open",))
            for step in range(1, steps + 1):
                progress(Progress("loading model", step, steps, f"shard {step}/{steps}"))
                if delay:
                    threading.Event().wait(delay)
            self._maybe_fail("open")
            return self

        return open_service

    # -- ChatService ----------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        self._maybe_fail("info")
        with self._lock:
            live = [e for e in self._edits.values() if e.status == "active"]
        return EngineInfo(
            model=self.model,
            device=self.device,
            ledger=self.ledger,
            active_memory_edits=sum(e.kind == "memory" for e in live),
            active_weight_edits=sum(e.kind == "weight" for e in live),
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(methods=ALL_METHODS, default_method=self.default_method, weight_edits=True,
                            export=True, hparams=True, audit=True)

    def problems(self) -> list[str]:
        return []

    def verify(self) -> list[str]:
        self.calls.append(("verify",))
        self._maybe_fail("verify")
        return []

    def export(self, folder: str | Path, format: str = "checkpoint") -> Path:
        self.calls.append(("export", str(folder)) if format == "checkpoint" else ("export", str(folder), format))
        self._maybe_fail("export")
        check_export_format(format)
        target = Path(folder).expanduser()
        if target.exists() and any(target.iterdir()):
            raise KbchatError(f"{target} is not empty: choose a new folder for the export")
        target.mkdir(parents=True, exist_ok=True)
        if format == "lora":
            (target / "adapter_config.json").write_text('{"peft_type": "LORA"}', encoding="utf-8")
        else:
            (target / "config.json").write_text("{}", encoding="utf-8")
        return target

    def ask(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
            max_new_tokens: int | None = None) -> Answer:
        self.calls.append(("ask", text, tuple(dict(m) for m in history)))
        self._maybe_fail("ask")
        return self._stream(text, memory, max_new_tokens, None).result()

    def stream(self, text: str, *, history: Sequence[Message] = (), memory: bool = True,
               max_new_tokens: int | None = None, cancel: threading.Event | None = None) -> AnswerStream:
        self.calls.append(("stream", text, tuple(dict(m) for m in history)))
        self._maybe_fail("stream")
        return self._stream(text, memory, max_new_tokens, cancel)

    def _stream(self, text: str, memory: bool, max_new_tokens: int | None,
                cancel: threading.Event | None) -> AnswerStream:
        _require_question(text)
        reply, used = self._reply(text, memory)
        with self._lock:
            weights = tuple(e.id for e in self._edits.values() if e.kind == "weight" and e.status == "active")
        cancel = cancel or threading.Event()
        pieces = _pieces(reply)
        if max_new_tokens is not None:
            pieces = pieces[:max_new_tokens]

        def generate() -> Iterator[str]:
            for piece in pieces:
                if self.piece_delay and cancel.wait(self.piece_delay):
                    return
                yield piece

        def finish(done: str) -> Answer:
            return Answer(done.strip(), used_edits=used, tokens=len(_pieces(done)), seconds=0.0,
                          weight_edits=weights)

        return AnswerStream(generate(), finish, cancel)

    def parse(self, text: str) -> ParsedEdit:
        self.calls.append(("parse", text))
        self._maybe_fail("parse")
        arrow = next((a for a in _ARROWS if a in text), None)
        if arrow is None:
            raise ParseError(f"cannot read {text!r}: write it as SUBJECT → FACT, "
                             "e.g. Eiffel Tower → The Eiffel Tower is located in Rome")
        subject, _, fact = (part.strip() for part in text.partition(arrow))
        fact = fact.rstrip(".").strip()
        if not subject or not fact:
            raise ParseError("both a subject and a fact are needed: SUBJECT → FACT")
        if subject.casefold() not in fact.casefold():
            raise ParseError(f"the fact {fact!r} does not mention the subject {subject!r}")
        prompt, _, target = fact.rpartition(" ")
        if subject.casefold() not in prompt.casefold():
            raise ParseError(f"the fact {fact!r} must end with what it says about {subject!r}")
        start = prompt.casefold().index(subject.casefold())
        subject = prompt[start:start + len(subject)]  # as it is written in the fact
        return ParsedEdit(raw_text=text, subject=subject, prompt=prompt, target=target, fact=fact)

    def edit(self, text: str, *, method: str | None = None, probes: Sequence[str] = (),
             progress: ProgressFn = no_progress, hparams: Mapping | None = None,
             audit: str = "background") -> EditRecord:
        # The fake's checks are instant, so every audit mode returns them at once.
        self.calls.append(("edit", text, method))
        method = method or self.default_method
        check_edit_options(method, hparams, audit)
        unknown = sorted(set(hparams or {}) - FAKE_HPARAMS)
        if unknown:
            raise KbchatError(f"{method} has no hyperparameter(s) {unknown}; known: {sorted(FAKE_HPARAMS)}")
        parsed = self.parse(text)
        steps = 3
        progress(Progress("prepare", 0, steps, f"{method}: tokenising the request"))
        for step in range(1, steps + 1):
            self._pause()
            progress(Progress("optimise", step, steps, f"{method}: step {step}", loss=round(2.0 / step, 3)))
        self._maybe_fail("edit")
        progress(Progress("check", steps, steps, "running checks"))
        with self._lock:
            edit_id = max(self._edits, default=0) + 1
            before = self.knowledge.get(parsed.subject.casefold())
            record = EditRecord(
                id=edit_id,
                created_at=FIXED_TIME + timedelta(minutes=edit_id),
                raw_text=text,
                subject=parsed.subject,
                prompt=parsed.prompt,
                target=parsed.target,
                method=method,
                kind=method_kind(method),
                status="active",
                target_true=before,
                checks=self._checks(parsed, before) if audit != "off" else (),
            )
            # An edit of the same subject and relation replaces the previous one.
            for old in list(self._edits.values()):
                if (old.status == "active" and old.kind == "memory" and record.kind == "memory"
                        and old.subject == record.subject and old.prompt == record.prompt):
                    self._edits[old.id] = replace(old, status="superseded", superseded_by=edit_id)
            self._edits[edit_id] = record
        return record

    def revert(self, edit_id: int) -> EditRecord:
        self.calls.append(("revert", edit_id))
        self._maybe_fail("revert")
        with self._lock:
            record = self._get(edit_id)
            if record.status != "active":
                raise KbchatError(f"edit #{edit_id} is {record.status}; only active edits can be reverted")
            record = replace(record, status="reverted", reverted_at=FIXED_TIME + timedelta(hours=1))
            self._edits[edit_id] = record
            for old in list(self._edits.values()):
                if old.status == "superseded" and old.superseded_by == edit_id:
                    self._edits[old.id] = replace(old, status="active", superseded_by=None,
                                                  notes=f"active again: #{edit_id} was reverted")
        return record

    def edits(self, *, status: str | None = None) -> list[EditRecord]:
        self.calls.append(("edits", status))
        self._maybe_fail("edits")
        with self._lock:
            return [e for _, e in sorted(self._edits.items()) if status is None or e.status == status]

    def get_edit(self, edit_id: int) -> EditRecord:
        self.calls.append(("get_edit", edit_id))
        self._maybe_fail("get_edit")
        with self._lock:
            return self._get(edit_id)

    def commit(self, *, progress: ProgressFn = no_progress) -> list[EditRecord]:
        self.calls.append(("commit",))
        self._maybe_fail("commit")
        with self._lock:
            pending = [e for e in self._edits.values() if e.status == "active" and e.kind == "memory"]
        if not pending:
            raise KbchatError("no active memory edits to commit")
        for step, record in enumerate(pending, start=1):
            self._pause()
            progress(Progress("commit", step, len(pending), f"writing edit #{record.id} into the weights"))
        ids = ", ".join(f"#{r.id}" for r in pending)
        with self._lock:
            edit_id = max(self._edits, default=0) + 1
            batch = EditRecord(
                id=edit_id, created_at=FIXED_TIME + timedelta(minutes=edit_id),
                raw_text=f"commit of memory edits {ids}", subject="; ".join(r.subject for r in pending),
                prompt="; ".join(r.prompt for r in pending), target="; ".join(r.target for r in pending),
                method=COMMIT_METHOD, kind="weight", status="active", notes=f"committed memory edits {ids}",
            )
            self._edits[edit_id] = batch
            retired = [replace(r, status="committed") for r in pending]
            self._edits.update({r.id: r for r in retired})
        return [batch, *retired]

    def say(self, chat_id: int, text: str, **options) -> AnswerStream:
        self.calls.append(("say", chat_id, text))
        self._maybe_fail("say")
        return super().say(chat_id, text, **options)

    def ask_again(self, chat_id: int, message_id: int, **options) -> AnswerStream:
        self.calls.append(("ask_again", chat_id, message_id))
        self._maybe_fail("ask_again")
        return super().ask_again(chat_id, message_id, **options)

    def chats(self) -> list[ChatSummary]:
        self._maybe_fail("chats")
        return super().chats()

    def new_chat(self, title: str = "") -> ChatSummary:
        self.calls.append(("new_chat", title))
        self._maybe_fail("new_chat")
        return super().new_chat(title)

    def chat(self, chat_id: int) -> Chat:
        self._maybe_fail("chat")
        return super().chat(chat_id)

    def rename_chat(self, chat_id: int, title: str) -> ChatSummary:
        self.calls.append(("rename_chat", chat_id, title))
        self._maybe_fail("rename_chat")
        return super().rename_chat(chat_id, title)

    def delete_chat(self, chat_id: int) -> None:
        self.calls.append(("delete_chat", chat_id))
        self._maybe_fail("delete_chat")
        super().delete_chat(chat_id)

    def search_chats(self, text: str, *, limit: int = 50) -> list[SearchHit]:
        self.calls.append(("search_chats", text))
        self._maybe_fail("search_chats")
        return super().search_chats(text, limit=limit)

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True
        if self._chat_ledger is not None:
            self._chat_ledger.close()
        if self._chat_dir is not None:
            shutil.rmtree(self._chat_dir, ignore_errors=True)
        self._keeper, self._chat_ledger, self._chat_dir = None, None, None

    # -- helpers --------------------------------------------------------------------------------

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.fail:
            raise self.fail[operation]

    def _pause(self) -> None:
        if self.edit_delay:
            threading.Event().wait(self.edit_delay)

    def _get(self, edit_id: int) -> EditRecord:
        try:
            return self._edits[edit_id]
        except KeyError:
            raise EditNotFound(f"no edit #{edit_id}: /edits lists them") from None

    def _reply(self, text: str, memory: bool) -> tuple[str, tuple[int, ...]]:
        question = text.casefold()
        if memory:
            with self._lock:  # committed edits live on in the (fake) weights
                live = [e for e in self._edits.values() if e.status in ("active", "committed")]
            for record in reversed(live):
                if record.subject.casefold() in question:
                    return f"{record.prompt} {record.target}.", (record.id,)
        for key, reply in self.script.items():
            if key in question:
                return reply, ()
        return self.default_answer, ()

    def _checks(self, parsed: ParsedEdit, before: str | None) -> tuple[CheckRecord, ...]:
        def check(metric: str, mode: str, probe: str, expected: str, was: str | None, now: str) -> CheckRecord:
            passed = metric not in self.failing_metrics
            return CheckRecord(metric, mode, probe, expected, was, now if passed else (was or "?"),
                               passed, 1.0 if passed else 0.0)

        return (
            check("reliability", "teacher_forced", parsed.prompt, parsed.target, before, parsed.target),
            check("generalization", "generation", f"Where is the {parsed.subject}? It is in",
                  parsed.target, before, parsed.target),
            check("locality", "generation", "The capital of France is", "Paris", "Paris", "Paris"),
        )


def _pieces(text: str) -> list[str]:
    """Words with their trailing whitespace: how the fake 'tokenises' an answer."""
    return re.findall(r"\S+\s*|\s+", text)


def _require_question(text: str) -> None:
    if not text.strip():
        raise KbchatError("empty question: type something to ask")
