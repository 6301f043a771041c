"""The chat pane: the saved conversation shown, its input and the slash commands it runs.

Every question goes to the service with `say(chat_id, …)` (the service keeps the conversation and gives
the model its earlier turns); what is shown is the chat as `chat(chat_id)` returns it. A chat is made
when its first question is asked, so starting the app makes no empty chats. Service calls run in thread
workers and their results reach the UI thread through `call_ui`. The pane needs from the App only what
`TaskGate` says (one long operation at a time).
"""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Input, Markdown

from kbchat.config import ALL_METHODS
from kbchat.conversations.records import Chat, ChatSummary
from kbchat.errors import KbchatError
from kbchat.records import EditRecord
from kbchat.service import Capabilities, ChatService
from kbchat.tui.answer_job import AnswerJob, run_answer
from kbchat.tui.chat_flows import ChatFlows
from kbchat.tui.chat_format import chat_title
from kbchat.tui.commands import Command, CommandSuggester, help_markdown, parse_command
from kbchat.tui.edit_flow import EditFlows
from kbchat.tui.message_nav import MessageList
from kbchat.tui.messages import AnswerMessage, EditCard, EmptyState, Lazy, Note, UserMessage, lazy_messages
from kbchat.tui.workers import TaskGate, call_ui, report_error, run_in_worker

OPENING = "Opening the model… type a question: it is asked as soon as the model is open"
READY = "Ask a question, or /help for commands"


class ChatPane(Vertical):
    """The conversation and its input. Questions typed before a service is attached are queued and asked
    once it is. One long operation at a time (answer, edit, commit, revert), through the App's `TaskGate`.
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel answer"),
        # A priority binding: the input (a scroll view) would otherwise take ↑ for itself.
        Binding("up", "messages", "Messages", key_display="↑", priority=True),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Kept: a worker may outlive this pane's place in the DOM.
        self._owner: App[Any] | None = None
        self._gate: TaskGate | None = None
        self.service: ChatService | None = None
        self.methods: tuple[str, ...] = ALL_METHODS  # those the service accepts, once attached
        self.default_method: str | None = None
        self.summary: ChatSummary | None = None  # the chat shown; None: a new one, made on the first question
        self.queued: list[UserMessage] = []  # questions waiting for the service (or for a chat to load)
        self.loading = False  # a chat is being read: questions wait for it
        self.job: AnswerJob | None = None  # the answer being generated
        self.edits = EditFlows(self)
        self.chats = ChatFlows(self)

    def compose(self) -> ComposeResult:
        yield MessageList(id="log")
        yield Input(placeholder=OPENING, id="prompt", suggester=CommandSuggester())

    def on_mount(self) -> None:
        app = self.app
        if not isinstance(app, TaskGate):
            raise TypeError("ChatPane needs an App that implements TaskGate")
        self._owner, self._gate = app, app
        self.log_view.anchor()
        self.prompt.focus()
        self.show_chat(None)

    def on_unmount(self) -> None:
        self.cancel_all()  # a generating thread must not outlive the UI

    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    @property
    def log_view(self) -> MessageList:
        return self.query_one("#log", MessageList)

    @property
    def chat_id(self) -> int | None:
        return self.summary.id if self.summary is not None else None

    @property
    def gate(self) -> TaskGate:
        """The App's task gate (also from worker threads, and after this pane was removed)."""
        assert self._gate is not None, "ChatPane is not mounted"
        return self._gate

    def attach(self, service: ChatService, capabilities: Capabilities, chat: Chat | None = None) -> None:
        """Start chatting with `service` in `chat` (None: a new chat), offering the methods its
        `capabilities` accept; questions queued meanwhile are asked now."""
        self.service = service
        self.methods = capabilities.methods
        self.prompt.suggester = CommandSuggester(self.methods)
        self.prompt.placeholder = READY
        self.show_chat(chat)
        self.ask_queued()

    def open_failed(self) -> None:
        """The service could not be opened: nothing can be asked."""
        self.prompt.disabled = True
        self.prompt.placeholder = "kbchat is not open"
        if self.queued:
            self.add_note(f"Not asked ({len(self.queued)} queued): the model did not open.", classes="error")
            for widget in self.queued:
                widget.remove()
            self.queued.clear()

    # -- output ---------------------------------------------------------------------------------

    def add(self, *widgets: Widget) -> None:
        log = self.log_view
        log.mount_all(widgets)
        log.anchor()

    def add_note(self, text: str | Content, *, classes: str = "") -> None:
        self.add(Note(text, classes=f"message note {classes}".strip()))

    def update_cards(self, record: EditRecord) -> None:
        """Show the new state of `record` on its cards in the log."""
        for card in self.query(EditCard):
            if card.record.id == record.id:
                card.show(record)

    def restore_input(self, line: str) -> None:
        """Give a rejected line back to the input, to be fixed (unless something new was typed)."""
        if line and not self.prompt.value:
            self.prompt.value = line

    def show_help(self) -> None:
        self.add(Markdown(help_markdown(self.default_method, self.methods), classes="message note help"))

    # -- the chat shown -------------------------------------------------------------------------

    def show_chat(self, chat: Chat | None, *, select: int | None = None) -> None:
        """Show `chat` (None: a new, empty one), then any queued questions; select message `select`."""
        self.summary = chat.summary if chat is not None else None
        log = self.log_view
        widgets: list[Widget | Lazy] = [*lazy_messages(chat.messages)] if chat is not None else []
        self.queued = [UserMessage(w.text, queued=True) for w in self.queued]
        if not widgets and not self.queued:
            widgets = [EmptyState()]
        log.show([*widgets, *self.queued])
        self.show_title()
        if select is not None:
            self.call_after_refresh(self.select_message, select)
        else:
            log.anchor()

    def show_title(self) -> None:
        chat = f" · chat #{self.chat_id}" if self.chat_id is not None else " · not saved until you ask"
        self.prompt.border_title = chat_title(self.summary) + chat

    def may_switch(self) -> bool:
        """Whether another chat may be shown now (not while an answer streams into this one)."""
        if self.job is not None or self.loading:
            busy = "an answer is being written (Esc cancels it)" if self.job is not None else "a chat is opening"
            self.app.notify(f"wait: {busy}", severity="warning")
            return False
        return True

    def new_chat(self) -> None:
        """Show a new, empty chat (saved when its first question is asked)."""
        if self.may_switch():
            self.show_chat(None)

    def open_chat(self, chat_id: int, *, select: int | None = None) -> None:
        """Read chat `chat_id` and show it (selecting message `select`); a failure is notified."""
        if self.service is None or not self.may_switch():
            return
        self.loading = True
        service = self.service
        run_in_worker(self, lambda: service.chat(chat_id), lambda chat: self._chat_read(chat, select),
                      failed=lambda: self._chat_read(None, None))

    def _chat_read(self, chat: Chat | None, select: int | None) -> None:
        self.loading = False
        if chat is not None:
            self.show_chat(chat, select=select)
        self.ask_queued()

    def refresh_provenance(self) -> None:
        """Read the chat again and show what became of the edits its answers used (after an edit, a
        revert or a commit anywhere)."""
        service, chat_id = self.service, self.chat_id
        if service is not None and chat_id is not None:
            run_in_worker(self, lambda: service.chat(chat_id), self._provenance_read)

    def _provenance_read(self, chat: Chat) -> None:
        if chat.id != self.chat_id:
            return
        self.log_view.show_provenance(chat)
        self.summary = chat.summary
        self.show_title()

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
        name = command.name
        if name == "ask":
            return self.ask(command.text)
        if name == "help":
            self.show_help()
            return True
        if self.service is None:
            self.app.notify("the model is still opening: only questions can wait for it", severity="warning")
            return False
        if name in EditFlows.COMMANDS:
            return self.edits.run(command, line)
        if name in ("new", "clear"):
            self.new_chat()
        else:
            self.chats.run(command)
        return True

    def chat_renamed(self, summary: ChatSummary) -> None:
        """Show the new title of the chat shown (or of the new chat just saved under a title)."""
        if self.summary is None or self.summary.id == summary.id:
            self.summary = summary
            self.show_title()

    def select_message(self, message_id: int) -> bool:
        """Select message `message_id` of the chat shown and focus the messages; False if not shown."""
        if not self.log_view.select_message(message_id):
            return False
        self.log_view.focus()
        return True

    # -- the message list -----------------------------------------------------------------------

    def action_messages(self) -> None:
        self.log_view.focus()

    @on(MessageList.LeaveRequested)
    def _leave(self) -> None:
        self.prompt.focus()

    @on(MessageList.CorrectionRequested)
    def _correct(self, event: MessageList.CorrectionRequested) -> None:
        self.prefill(event.line)  # nothing is edited until Enter (and the confirmation)

    def prefill(self, line: str) -> None:
        """Put `line` in the input, the cursor at its end, to be finished and sent with Enter."""
        self.prompt.value = line
        self.prompt.focus()
        self.prompt.cursor_position = len(line)

    @on(MessageList.LatestRequested)
    def _latest(self) -> None:
        if self.chat_id is not None:
            self.open_chat(self.chat_id)

    @on(MessageList.AskAgainRequested)
    def _ask_again(self, event: MessageList.AskAgainRequested) -> None:
        self.ask_again(event.question)

    # -- answers --------------------------------------------------------------------------------

    def ask(self, question: str, *, waiting: UserMessage | None = None) -> bool:
        """Ask `question` in the chat shown (made now if new); the answer streams into the log, under
        `waiting` when it was queued. Before the service is open, or while a chat loads, it is queued."""
        if self.service is None or self.loading or self.log_view.detached:
            self._clear_empty_state()
            self.queued.append(UserMessage(question, queued=True))
            if self.log_view.detached and not self.loading and self.chat_id is not None:
                self.open_chat(self.chat_id)  # the latest messages first; the question is asked after them
            else:
                self.add(self.queued[-1])
            return True
        if not self.gate.begin_task("answering"):
            return False
        self._clear_empty_state()
        asked = waiting or UserMessage(question)
        view = AnswerMessage(asked)
        if waiting is None:
            self.add(asked, view)
        else:
            waiting.set_queued(False)
            self.log_view.mount(view, after=waiting)
        self._start(AnswerJob(question, asked, view, self.chat_id))
        return True

    def ask_queued(self) -> None:
        """Ask the first queued question where it stands, if the service is ready (the others follow, one
        per answer)."""
        if self.queued and self.service is not None and not self.loading and self.job is None:
            if self.ask(self.queued[0].text, waiting=self.queued[0]):
                self.queued.pop(0)

    def ask_again(self, question: UserMessage) -> bool:
        """Answer saved `question` again, as the model stands now, under its earlier answers ("then:")."""
        if self.service is None or question.message_id is None or self.chat_id is None:
            return False
        if not self.gate.begin_task("answering"):
            return False
        log = self.log_view
        for earlier in log.answers_to(question):
            earlier.set_label("then:")
        view = AnswerMessage(question, label="now:")
        log.mount(view, after=log.last_of(question))
        log.select(view)
        self._start(AnswerJob(question.text, question, view, self.chat_id, again=question.message_id))
        return True

    def _clear_empty_state(self) -> None:
        for widget in self.query(EmptyState):
            widget.remove()

    def _start(self, job: AnswerJob) -> None:
        assert self.service is not None
        self.job = job
        self.refresh_bindings()
        self._answer(self.service, job)

    @work(thread=True, group="answer", exit_on_error=False)
    def _answer(self, service: ChatService, job: AnswerJob) -> None:
        try:
            run_answer(service, job, self.ui, self.job_failed)
        finally:
            try:
                self.ui(self._answered, job)
            finally:
                self.gate.task_done()
            self.ui(self.ask_queued)

    def _answered(self, job: AnswerJob) -> None:
        job.view.finish(job.answer, cancelled=job.cancelled, failed=job.failed, saved=job.saved)
        if job.answer is not None and job.answer.question_id is not None:
            job.question.message_id = job.answer.question_id
        if job.chat is not None and (self.summary is None or self.summary.id == job.chat.id):
            self.summary = job.chat
            self.show_title()
        self.job = None
        self.refresh_bindings()

    def ui(self, callback: Any, *args: Any) -> Any:
        """Run `callback` on the UI thread (from a worker) and return its result; None once exiting."""
        assert self._owner is not None, "ChatPane is not mounted"
        return call_ui(self._owner, callback, *args)

    def job_failed(self, error: BaseException) -> None:
        """Report a worker's failure (from the worker thread)."""
        assert self._owner is not None, "ChatPane is not mounted"
        report_error(self._owner, error)

    @property
    def answering(self) -> bool:
        return self.job is not None or bool(self.query(".streaming"))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.answering
        if action == "messages":
            return self.prompt.has_focus and bool(self.log_view.messages())
        return True

    def action_cancel(self) -> None:
        """Stop the running answer after the current token; the partial text stays, marked."""
        job = self.job
        if job is not None:
            job.cancel.set()

    def cancel_all(self) -> None:
        """Stop any running answer (on exit)."""
        self.action_cancel()

