"""The chat pane: the conversation, its input and the slash commands it runs.

`ChatPane` runs every service call in a thread worker; results reach the UI thread through `call_ui`.
It needs from the App only what `TaskGate` says (one long operation at a time), and asks the App for
the audit screen with an `AuditRequested` message, so it never imports the App.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.suggester import Suggester
from textual.widgets import Input, Markdown
from textual.widgets.markdown import MarkdownStream

from kbchat.config import ALL_METHODS, method_kind
from kbchat.errors import KbchatError
from kbchat.records import Answer, EditRecord, ParsedEdit, ProgressFn
from kbchat.service import AnswerStream, Capabilities, ChatService
from kbchat.tui.commands import Command, CommandError, complete, help_markdown, parse_command
from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.events import AuditRequested, EditsChanged
from kbchat.tui.format import edit_confirmation, records_note
from kbchat.tui.messages import AnswerMessage, EditCard, EditProgress, Note, UserMessage
from kbchat.tui.revert import revert_with_confirmation
from kbchat.tui.workers import TaskGate, call_ui, report_error

T = TypeVar("T")


class CommandSuggester(Suggester):
    """Completes slash command names, methods and statuses (see commands.complete)."""

    def __init__(self, methods: Sequence[str] = ALL_METHODS) -> None:
        super().__init__(use_cache=True, case_sensitive=True)
        self.methods = tuple(methods)

    async def get_suggestion(self, value: str) -> str | None:
        return complete(value, self.methods)


class ChatPane(Vertical):
    """The conversation and its input. Attach a service before use; until then the input is disabled.

    One long operation at a time (answer, edit, commit, revert), through the App's `TaskGate`.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel answer")]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Kept: a worker may outlive this pane's place in the DOM.
        self._owner: App[Any] | None = None
        self._gate: TaskGate | None = None
        self.service: ChatService | None = None
        self.methods: tuple[str, ...] = ALL_METHODS  # those the service accepts, once attached
        self.history: list[dict[str, str]] = []
        self.default_method: str | None = None
        self._stream: AnswerStream | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="log")
        yield Input(placeholder="Opening the model…", id="prompt", disabled=True, suggester=CommandSuggester())

    def on_mount(self) -> None:
        app = self.app
        if not isinstance(app, TaskGate):
            raise TypeError("ChatPane needs an App that implements TaskGate")
        self._owner, self._gate = app, app
        self.query_one("#log").anchor()

    def on_unmount(self) -> None:
        self.cancel_all()  # a generating thread must not outlive the UI

    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    def attach(self, service: ChatService, capabilities: Capabilities) -> None:
        """Start chatting with `service`, offering the methods its `capabilities` accept."""
        self.service = service
        self.methods = capabilities.methods
        self.prompt.suggester = CommandSuggester(self.methods)
        self.prompt.disabled = False
        self.prompt.placeholder = "Ask a question, or /help for commands"
        self.prompt.focus()
        self.add_note("Ask a question, or correct what the model knows with "
                      "/edit SUBJECT → FACT. /help lists the commands.")

    # -- output ---------------------------------------------------------------------------------

    def add(self, *widgets: Any) -> None:
        log = self.query_one("#log", VerticalScroll)
        log.mount_all(widgets)
        log.anchor()

    def add_note(self, text: str | Content, *, classes: str = "") -> None:
        self.add(Note(text, classes=f"message note {classes}".strip()))

    def update_cards(self, record: EditRecord) -> None:
        """Show the new state of `record` on its cards in the log."""
        for card in self.query(EditCard):
            if card.record.id == record.id:
                card.show(record)

    def clear(self) -> None:
        """Forget the conversation (edits are untouched)."""
        self.query_one("#log").remove_children()
        self.history.clear()

    # -- input ----------------------------------------------------------------------------------

    @on(Input.Submitted, "#prompt")
    def _submitted(self, event: Input.Submitted) -> None:
        try:
            command = parse_command(event.value, default_method=self.default_method, methods=self.methods)
        except KbchatError as error:
            self.app.notify(str(error), severity="error", markup=False)
            return  # the text stays in the input, to be fixed
        if command is None:
            return
        if self.run_command(command, line=event.value):
            self.prompt.clear()

    def run_command(self, command: Command, *, line: str = "") -> bool:
        """Carry out a parsed command; False if it could not start (nothing changed).

        `line` is the input it came from: given back to the input if the service rejects an /edit.
        """
        if self.service is None:
            self.app.notify("the model is still opening", severity="warning")
            return False
        name = command.name
        if name == "ask":
            return self.ask(command.text)
        if name == "edit":
            return self._begin("reading the edit") and bool(self._parse_edit(command.text, command.method, line))
        if name == "commit":
            service = self.service
            return self._start_with_progress("committing", "committing",
                                             lambda progress: service.commit(progress=progress), self._committed)
        if name == "edits":
            self._list_edits(command.text or None)
        elif name == "revert":
            assert command.edit_id is not None
            self._revert(command.edit_id)
        elif name == "audit":
            self.post_message(AuditRequested(command.edit_id))
        elif name == "method":
            self._set_method(command.method)
        elif name == "clear":
            self.clear()
        elif name == "help":
            self.add(Markdown(help_markdown(self.default_method, self.methods), classes="message note help"))
        else:  # pragma: no cover - parse_command only returns the names above
            raise CommandError(f"unhandled command {name}")
        return True

    # -- workers --------------------------------------------------------------------------------

    @property
    def gate(self) -> TaskGate:
        """The App's task gate (also from worker threads, and after this pane was removed)."""
        assert self._gate is not None, "ChatPane is not mounted"
        return self._gate

    def _begin(self, task: str) -> bool:
        return self.gate.begin_task(task)

    def _ui(self, callback: Callable[..., Any], *args: Any) -> Any:
        """Run `callback` on the UI thread (from a worker) and return its result; None once exiting."""
        assert self._owner is not None, "ChatPane is not mounted"
        return call_ui(self._owner, callback, *args)

    def _fail(self, error: BaseException) -> None:
        """Report a worker's failure (from the worker thread)."""
        assert self._owner is not None, "ChatPane is not mounted"
        report_error(self._owner, error)

    def _start_with_progress(self, task: str, title: str, call: Callable[[ProgressFn], T],
                             done: Callable[[EditProgress, T | None], object]) -> bool:
        """Claim the gate for `task`, then run `call(progress)` in a worker with a progress view in the
        log; `done(view, result)` runs on the UI thread after it (result None if it failed)."""
        if not self._begin(task):
            return False
        view = EditProgress(title)
        self.add(view)
        self._with_progress(view, call, done)
        return True

    @work(thread=True, group="edit", exit_on_error=False)
    def _with_progress(self, view: EditProgress, call: Callable[[ProgressFn], T],
                       done: Callable[[EditProgress, T | None], object]) -> None:
        result: T | None = None
        try:
            result = call(lambda progress: self._ui(view.show, progress))
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            self._fail(error)
        finally:
            try:
                self._ui(done, view, result)
            finally:
                self.gate.task_done()

    # -- answers --------------------------------------------------------------------------------

    def ask(self, question: str) -> bool:
        """Ask `question` with the conversation so far; the answer streams into the log."""
        if not self._begin("answering"):
            return False
        answer = AnswerMessage()
        self.add(UserMessage(question, classes="message user"), answer)
        self._answer(question, list(self.history), answer)
        self.refresh_bindings()
        return True

    @work(thread=True, group="answer", exit_on_error=False)
    def _answer(self, question: str, history: Sequence[dict[str, str]], view: AnswerMessage) -> None:
        md_stream: MarkdownStream | None = None
        stream: AnswerStream | None = None
        failed = False
        try:
            assert self.service is not None
            stream = self.service.stream(question, history=history)
            self._stream = stream
            md_stream = self._ui(view.start_stream)
            for piece in stream:
                if md_stream is None:  # the UI is gone
                    stream.close()
                else:
                    self._ui(md_stream.write, piece)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            failed = True
            self._fail(error)
        finally:
            self._stream = None
            try:
                cancelled = stream is not None and stream.cancel.is_set()
                answer = stream.answer if stream is not None else None
                self._ui(self._answered, view, md_stream, question, answer, cancelled, failed)
            finally:
                self.gate.task_done()
        self._ui(self.refresh_bindings)

    async def _answered(self, view: AnswerMessage, md_stream: MarkdownStream | None, question: str,
                        answer: Answer | None, cancelled: bool, failed: bool) -> None:
        await view.finish(md_stream, answer, cancelled=cancelled, failed=failed)
        # A cancelled or failed turn is not part of the history: the model never finished saying it.
        if answer is not None and not cancelled and not failed:
            self.history += [{"role": "user", "content": question},
                             {"role": "assistant", "content": answer.text}]

    @property
    def answering(self) -> bool:
        return self._stream is not None or bool(self.query(".streaming"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.answering
        return True

    def action_cancel(self) -> None:
        """Stop the running answer after the current token; the partial text stays, marked."""
        stream = self._stream
        if stream is not None:
            stream.cancel.set()

    def cancel_all(self) -> None:
        """Stop any running answer (on exit)."""
        self.action_cancel()

    # -- edits ----------------------------------------------------------------------------------

    @work(thread=True, group="edit", exit_on_error=False)
    def _parse_edit(self, text: str, method: str | None, line: str) -> None:
        try:
            assert self.service is not None
            parsed = self.service.parse(text)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            self._fail(error)
            self._ui(self._restore_input, line)
            return
        finally:
            self.gate.task_done()
        self._ui(self._confirm_edit, text, parsed, method)

    def _restore_input(self, line: str) -> None:
        """Give a rejected line back to the input, to be fixed (unless something new was typed)."""
        if line and not self.prompt.value:
            self.prompt.value = line

    def _confirm_edit(self, text: str, parsed: ParsedEdit, method: str | None) -> None:
        service = self.service
        assert service is not None

        def confirmed(answer: bool | None) -> None:
            if answer:
                self._start_with_progress("editing", f"editing: {parsed.subject} → {parsed.target}",
                                          lambda progress: service.edit(text, method=method, progress=progress),
                                          self._edited)

        self.app.push_screen(ConfirmScreen("Confirm edit", edit_confirmation(parsed, method), confirm="Edit"),
                             confirmed)

    def _edited(self, view: EditProgress, record: EditRecord | None) -> None:
        view.remove()
        if record is not None:
            self.add(EditCard(record))
            self.post_message(EditsChanged())

    def _committed(self, view: EditProgress, records: list[EditRecord] | None) -> None:
        """After /commit: `records` is the new weight edit, then the memory edits it retired."""
        view.remove()
        if not records:
            return
        new, retired = records[0], records[1:]
        count = f"{len(retired)} edit{'' if len(retired) == 1 else 's'}"
        self.add_note(records_note(f"Committed {count} into the weights as edit #{new.id}:", retired))
        for record in records:
            self.update_cards(record)
        self.post_message(EditsChanged())

    @work(thread=True, group="read", exit_on_error=False)
    def _list_edits(self, status: str | None) -> None:
        try:
            assert self.service is not None
            records = self.service.edits(status=status)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            self._fail(error)
            return
        self._ui(self._show_edits, records, status)

    def _show_edits(self, records: list[EditRecord], status: str | None) -> None:
        which = f"{status} edits" if status else "edits"
        if not records:
            self.add_note(f"No {which} yet. Correct a fact with /edit SUBJECT → FACT.")
            return
        self.add_note(records_note(f"{len(records)} {which} (/audit ID for details):", records), classes="edits")

    @work(thread=True, group="read", exit_on_error=False)
    def _revert(self, edit_id: int) -> None:
        try:
            assert self.service is not None
            record = self.service.get_edit(edit_id)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            self._fail(error)
            return
        self._ui(revert_with_confirmation, self, self.service, record)

    def _set_method(self, method: str | None) -> None:
        if method is None:
            current = self.default_method or "the engine's default"
            self.add_note(f"Default method for /edit: {current}. Set it with /method NAME.")
            return
        self.default_method = method
        self.add_note(f"Default method for /edit is now {method} ({method_kind(method)} edit).")
