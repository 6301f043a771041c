"""The chat: messages rendered as Markdown, streamed answers, slash commands, edit cards.

`ChatPane` owns the conversation and runs every service call in a thread worker; results reach the
UI thread through `call_from_thread`. Pure formatting helpers come first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input, Label, Markdown, ProgressBar, Static
from textual.widgets.markdown import MarkdownStream

from kbchat.config import method_kind
from kbchat.errors import KbchatError
from kbchat.records import Answer, EditRecord, ParsedEdit, Progress
from kbchat.service import AnswerStream, ChatService
from kbchat.tui.audit import (
    RESULT_MARKS,
    STATUS_STYLES,
    ConfirmScreen,
    EditsChanged,
    call_ui,
    edit_summary,
    notify_error,
    revert_with_confirmation,
)
from kbchat.tui.commands import Command, CommandError, complete, help_markdown, parse_command

if TYPE_CHECKING:
    from kbchat.tui.app import KbchatApp

# -- pure helpers ---------------------------------------------------------------------------------


def progress_line(progress: Progress) -> str:
    """"optimise 3/10 · loss 0.412 · message" for a progress event."""
    parts = [progress.stage]
    if progress.total:
        parts[0] += f" {progress.step}/{progress.total}"
    elif progress.step:
        parts[0] += f" {progress.step}"
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.3f}")
    if progress.message:
        parts.append(progress.message)
    return " · ".join(parts)


def answer_meta(answer: Answer | None, *, cancelled: bool = False, failed: bool = False) -> Content:
    """The line under an answer: which edits it used (clickable), and whether it was cut short."""
    parts: list[Content] = []
    if answer is not None and answer.used_edits:
        links = Content(", ").join(
            Content.from_markup(f"[@click=app.audit({i})]edit #{i}[/]") for i in answer.used_edits
        )
        parts.append(Content.assemble(("memory: ", "bold"), links))
    if cancelled:
        parts.append(Content.styled("(cancelled)", "italic"))
    if failed:
        parts.append(Content.styled("(failed)", "italic red"))
    return Content(" · ").join(parts)


def edit_card_content(record: EditRecord) -> Content:
    """An edit as a chat card: subject → target, method, status, then one line per check."""
    status_style = STATUS_STYLES.get(record.status, "")
    lines = [
        Content.assemble((record.subject, "bold"), " → ", (record.target, "bold"),
                         ("   was: ", "dim"), record.target_true or "—"),
        Content.assemble(f"{record.method} ({record.kind})", " · ", (record.status, status_style), "  ",
                         Content.from_markup(f"[@click=app.audit({record.id})]details[/]")),
    ]
    if record.error:
        lines.append(Content.styled(record.error, "red"))
    if not record.checks:
        lines.append(Content.styled("checks pending", "dim"))
    for check in record.checks:
        mark, style = RESULT_MARKS[check.passed]
        lines.append(Content.assemble(
            (f"{mark} {check.metric}", style), (f" ({check.mode}) ", "dim"), check.probe, " → ",
            (check.after if check.after is not None else "…", "bold"),
        ))
    return Content("\n").join(lines)


def edit_confirmation(parsed: ParsedEdit, method: str | None) -> Content:
    """The body of the /edit confirmation: what will be written, and how."""
    how = f"{method} ({method_kind(method)} edit)" if method else "engine default"
    rows = [("subject", parsed.subject), ("prompt", parsed.prompt), ("target", parsed.target),
            ("method", how)]
    body = Content("\n").join(
        Content.assemble((f"{name:<8} ", "dim"), (value, "bold" if name == "target" else "")) for name, value in rows
    )
    return Content.assemble(body, "\n\n", ("The model will complete the prompt with the target.", "dim"))


class CommandSuggester(Suggester):
    """Completes slash command names, methods and statuses (see commands.complete)."""

    def __init__(self) -> None:
        super().__init__(use_cache=True, case_sensitive=True)

    async def get_suggestion(self, value: str) -> str | None:
        return complete(value)


# -- widgets ----------------------------------------------------------------------------------------


class UserMessage(Markdown):
    """A question as the user typed it."""


class Note(Static):
    """A line or block from kbchat itself (command results, reports)."""


class AnswerMessage(Vertical):
    """An answer: Markdown that grows as pieces stream in, then a meta line (edits used, cancelled)."""

    def __init__(self) -> None:
        super().__init__(classes="message assistant streaming")
        self.body = Markdown("", classes="answer-body")
        self.meta = Static("", classes="answer-meta")

    def compose(self) -> ComposeResult:
        yield self.body
        yield self.meta

    def start_stream(self) -> MarkdownStream:
        """A Markdown stream to append pieces to (call on the UI thread)."""
        return Markdown.get_stream(self.body)

    async def finish(self, stream: MarkdownStream | None, answer: Answer | None, *, cancelled: bool,
                     failed: bool = False) -> None:
        """Stop streaming and render the final text once, in full, with its meta line."""
        if stream is not None:
            await stream.stop()
        if answer is not None:
            await self.body.update(answer.text or "*(no answer)*")
        elif not self.body.source:
            await self.body.update("*(no answer)*")
        meta = answer_meta(answer, cancelled=cancelled, failed=failed)
        self.meta.update(meta)
        self.meta.display = bool(meta)
        self.remove_class("streaming")
        self.set_class(cancelled, "cancelled")


class EditProgress(Vertical):
    """Live progress of a running edit or commit."""

    def __init__(self, title: str) -> None:
        super().__init__(classes="message progress")
        self.border_title = title
        self.label = Label("starting…")
        self.bar = ProgressBar(total=None, show_eta=False)

    def compose(self) -> ComposeResult:
        yield self.label
        yield self.bar

    def show(self, progress: Progress) -> None:
        self.label.update(progress_line(progress))
        if progress.total:
            self.bar.update(total=progress.total, progress=progress.step)


class EditCard(Static):
    """A finished edit: id, subject → target, method, status and its checks."""

    def __init__(self, record: EditRecord) -> None:
        super().__init__(classes="message card")
        self.record = record
        self.show(record)

    def show(self, record: EditRecord) -> None:
        """Render `record` (again, after a revert or commit)."""
        self.remove_class(f"status-{self.record.status}")
        self.record = record
        self.add_class(f"status-{record.status}")
        self.border_title = f"edit #{record.id}"
        self.update(edit_card_content(record))


# -- the chat -----------------------------------------------------------------------------------------


class ChatPane(Vertical):
    """The conversation and its input. Attach a service before use; until then the input is disabled.

    One long operation at a time (answer, edit, commit, revert): the App's begin_task / task_done.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel answer")]

    class AuditRequested(Message):
        """The user asked for the audit screen (`edit_id` None) or one edit's detail."""

        def __init__(self, edit_id: int | None) -> None:
            super().__init__()
            self.edit_id = edit_id

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner: KbchatApp | None = None  # kept: a worker may outlive this pane's place in the DOM
        self.service: ChatService | None = None
        self.history: list[dict[str, str]] = []
        self.default_method: str | None = None
        self._stream: AnswerStream | None = None

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="log")
        yield Input(placeholder="Opening the model…", id="prompt", disabled=True, suggester=CommandSuggester())

    def on_mount(self) -> None:
        self._owner = cast("KbchatApp", self.app)
        self.query_one("#log").anchor()

    def on_unmount(self) -> None:
        self.cancel_all()  # a generating thread must not outlive the UI

    @property
    def kb(self) -> KbchatApp:
        """The App (also from worker threads, and after this pane was removed)."""
        assert self._owner is not None, "ChatPane is not mounted"
        return self._owner

    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    def attach(self, service: ChatService) -> None:
        """Start chatting with `service`."""
        self.service = service
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
            command = parse_command(event.value, default_method=self.default_method)
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
            if not self._begin("committing"):
                return False
            view = EditProgress("committing")
            self.add(view)
            self._commit(view)
            return True
        if name == "edits":
            self._list_edits(command.text or None)
        elif name == "revert":
            assert command.edit_id is not None
            self._revert(command.edit_id)
        elif name == "audit":
            self.post_message(self.AuditRequested(command.edit_id))
        elif name == "method":
            self._set_method(command.method)
        elif name == "clear":
            self.clear()
        elif name == "help":
            self.add(Markdown(help_markdown(self.default_method), classes="message note help"))
        else:  # pragma: no cover - parse_command only returns the names above
            raise CommandError(f"unhandled command {name}")
        return True

    def _begin(self, task: str) -> bool:
        return self.kb.begin_task(task)

    def _ui(self, callback: Callable[..., Any], *args: Any) -> Any:
        """Run `callback` on the UI thread (from a worker) and return its result; None once exiting."""
        return call_ui(self.kb, callback, *args)

    def _fail(self, error: BaseException) -> None:
        """Report a worker's failure (from the worker thread)."""
        self._ui(notify_error, self.kb, error)

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
                self.kb.task_done()
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
            self.kb.task_done()
        self._ui(self._confirm_edit, text, parsed, method)

    def _restore_input(self, line: str) -> None:
        """Give a rejected line back to the input, to be fixed (unless something new was typed)."""
        if line and not self.prompt.value:
            self.prompt.value = line

    def _confirm_edit(self, text: str, parsed: ParsedEdit, method: str | None) -> None:
        def confirmed(answer: bool | None) -> None:
            if answer and self._begin("editing"):
                view = EditProgress(f"editing: {parsed.subject} → {parsed.target}")
                self.add(view)
                self._edit(text, method, view)

        self.app.push_screen(ConfirmScreen("Confirm edit", edit_confirmation(parsed, method), confirm="Edit"),
                             confirmed)

    @work(thread=True, group="edit", exit_on_error=False)
    def _edit(self, text: str, method: str | None, view: EditProgress) -> None:
        record = None
        try:
            assert self.service is not None
            record = self.service.edit(text, method=method, progress=lambda p: self._ui(view.show, p))
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            self._fail(error)
        finally:
            try:
                self._ui(self._edited, view, record)
            finally:
                self.kb.task_done()

    def _edited(self, view: EditProgress, record: EditRecord | None) -> None:
        view.remove()
        if record is not None:
            self.add(EditCard(record))
            self.post_message(EditsChanged())

    @work(thread=True, group="edit", exit_on_error=False)
    def _commit(self, view: EditProgress) -> None:
        records = None
        try:
            assert self.service is not None
            records = self.service.commit(progress=lambda p: self._ui(view.show, p))
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            self._fail(error)
        finally:
            try:
                self._ui(self._committed, view, records)
            finally:
                self.kb.task_done()

    def _committed(self, view: EditProgress, records: list[EditRecord] | None) -> None:
        view.remove()
        if records is None:
            return
        if not records:
            self.add_note("Nothing to commit.")
            return
        lines = [Content(f"Committed {len(records)} edit{'s' if len(records) != 1 else ''}:")]
        lines += [Content.from_rich_text(edit_summary(r)) for r in records]
        self.add_note(Content("\n").join(lines))
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
        lines = [Content(f"{len(records)} {which} (/audit ID for details):")]
        lines += [Content.from_rich_text(edit_summary(r)) for r in records]
        self.add_note(Content("\n").join(lines), classes="edits")

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
