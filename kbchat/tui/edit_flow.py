"""The chat's edit commands: /edit (read, confirm, then edit with progress), /commit, /edits, /revert and
/method. `EditFlows` works through what `ChatHost` offers (the chat pane implements it), so it never
reaches into the pane."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from textual.content import Content
from textual.message import Message
from textual.widget import Widget

from kbchat.config import method_kind
from kbchat.records import EditRecord, ParsedEdit, ProgressFn
from kbchat.service import ChatService
from kbchat.tui.commands import Command, CommandError
from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.events import AuditRequested, EditsChanged
from kbchat.tui.format import edit_confirmation, records_note
from kbchat.tui.messages import EditCard, EditProgress
from kbchat.tui.revert import revert_with_confirmation
from kbchat.tui.workers import TaskGate, WorkerOwner, call_ui, report_error, run_in_worker

T = TypeVar("T")


class ChatHost(WorkerOwner, Protocol):
    """What the edit flows need from the chat: the service, the task gate, and a log to write to."""

    service: ChatService | None
    default_method: str | None

    @property
    def gate(self) -> TaskGate: ...

    def add(self, *widgets: Widget) -> None: ...

    def add_note(self, text: str | Content, *, classes: str = "") -> None: ...

    def update_cards(self, record: EditRecord) -> None: ...

    def restore_input(self, line: str) -> None: ...

    def post_message(self, message: Message) -> bool: ...


class EditFlows:
    """The edit commands of one chat `host`. Long operations (edit, commit) hold the host's task gate."""

    COMMANDS = ("edit", "commit", "edits", "revert", "method", "audit")

    def __init__(self, host: ChatHost) -> None:
        self.host = host

    def run(self, command: Command, line: str = "") -> bool:
        """Carry out one of COMMANDS; False if it could not start. `line`: the input it came from."""
        name = command.name
        if name == "edit":
            return self.edit(command.text, command.method, line)
        if name == "commit":
            return self.commit()
        if name == "edits":
            self.list_edits(command.text or None)
        elif name == "revert":
            assert command.edit_id is not None
            self.revert(command.edit_id)
        elif name == "method":
            self.set_method(command.method)
        elif name == "audit":
            self.host.post_message(AuditRequested(command.edit_id))
        else:  # pragma: no cover - the pane sends only COMMANDS here
            raise CommandError(f"unhandled command {name}")
        return True

    @property
    def service(self) -> ChatService:
        assert self.host.service is not None, "the chat has no service yet"
        return self.host.service

    # -- /edit --------------------------------------------------------------------------------------

    def edit(self, text: str, method: str | None, line: str) -> bool:
        """Read `text` with the service, then ask to confirm the edit; False if the gate is taken.
        `line` (the input it came from) goes back to the input when the service rejects it."""
        host, service = self.host, self.service
        if not host.gate.begin_task("reading the edit"):
            return False

        def run() -> None:
            try:
                parsed = service.parse(text)
            except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
                report_error(host.app, error)
                call_ui(host.app, host.restore_input, line)
                return
            finally:
                host.gate.task_done()
            call_ui(host.app, self._confirm, text, parsed, method)

        host.run_worker(run, thread=True, group="edit", exit_on_error=False)
        return True

    def _confirm(self, text: str, parsed: ParsedEdit, method: str | None) -> None:
        service = self.service

        def confirmed(answer: bool | None) -> None:
            if answer:
                self.with_progress("editing", f"editing: {parsed.subject} → {parsed.target}",
                                   lambda progress: service.edit(text, method=method, progress=progress),
                                   self._edited)

        self.host.app.push_screen(ConfirmScreen("Confirm edit", edit_confirmation(parsed, method), confirm="Edit"),
                                  confirmed)

    def _edited(self, view: EditProgress, record: EditRecord | None) -> None:
        view.remove()
        if record is not None:
            self.host.add(EditCard(record))
            self.host.post_message(EditsChanged())

    # -- /commit ------------------------------------------------------------------------------------

    def commit(self) -> bool:
        service = self.service
        return self.with_progress("committing", "committing", lambda progress: service.commit(progress=progress),
                                  self._committed)

    def _committed(self, view: EditProgress, records: list[EditRecord] | None) -> None:
        """After /commit: `records` is the new weight edit, then the memory edits it retired."""
        view.remove()
        if not records:
            return
        new, retired = records[0], records[1:]
        count = f"{len(retired)} edit{'' if len(retired) == 1 else 's'}"
        self.host.add_note(records_note(f"Committed {count} into the weights as edit #{new.id}:", retired))
        for record in records:
            self.host.update_cards(record)
        self.host.post_message(EditsChanged())

    def with_progress(self, task: str, title: str, call: Callable[[ProgressFn], T],
                      done: Callable[[EditProgress, T | None], object]) -> bool:
        """Claim the gate for `task`, then run `call(progress)` in a worker with a progress view in the
        log; `done(view, result)` runs on the UI thread after it (result None if it failed)."""
        host = self.host
        if not host.gate.begin_task(task):
            return False
        view = EditProgress(title)
        host.add(view)
        app, gate = host.app, host.gate

        def run() -> None:
            result: T | None = None
            try:
                result = call(lambda progress: call_ui(app, view.show, progress))
            except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
                report_error(app, error)
            finally:
                # Free the gate before showing the outcome: a question typed once the card shows must
                # not be refused as "wait: editing".
                try:
                    gate.task_done()
                finally:
                    call_ui(app, done, view, result)

        host.run_worker(run, thread=True, group="edit", exit_on_error=False)
        return True

    # -- /edits, /revert, /method -------------------------------------------------------------------

    def list_edits(self, status: str | None) -> None:
        service = self.service
        run_in_worker(self.host, lambda: service.edits(status=status),
                      lambda records: self._show_edits(records, status))

    def _show_edits(self, records: list[EditRecord], status: str | None) -> None:
        which = f"{status} edits" if status else "edits"
        if not records:
            self.host.add_note(f"No {which} yet. Correct a fact with /edit SUBJECT → FACT.")
            return
        self.host.add_note(records_note(f"{len(records)} {which} (/audit ID for details):", records),
                           classes="edits")

    def revert(self, edit_id: int) -> None:
        service, host = self.service, self.host
        run_in_worker(host, lambda: service.get_edit(edit_id),
                      lambda record: revert_with_confirmation(host, service, record))

    def set_method(self, method: str | None) -> None:
        host = self.host
        if method is None:
            current = host.default_method or "the engine's default"
            host.add_note(f"Default method for /edit: {current}. Set it with /method NAME.")
            return
        host.default_method = method
        host.add_note(f"Default method for /edit is now {method} ({method_kind(method)} edit).")
