"""The widgets of the conversation: questions, streamed and saved answers, notes, the empty state, edit
progress and edit cards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from rich.console import Group
from rich.markdown import Markdown as RichMarkdown
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget
from textual.widgets import Label, ProgressBar, Static

from kbchat.conversations.records import ChatMessage
from kbchat.records import Answer, EditRecord, Progress
from kbchat.tui.chat_format import EMPTY_STATE, provenance_content
from kbchat.tui.format import edit_card_content, progress_line

QUEUED = "queued: asked as soon as the model is open"


class UserMessage(Static):
    """A question as the user typed it; `message_id` is its saved id (None until saved). A queued
    question waits for the model to open and says so. One widget, however long the chat: each mounted
    widget costs every key press a layout pass."""

    def __init__(self, text: str, *, message_id: int | None = None, queued: bool = False) -> None:
        super().__init__(classes="message user")
        self.text = text
        self.message_id = message_id
        self.set_queued(queued)

    @property
    def note(self) -> str:
        """The line shown under the question ("" for none)."""
        return QUEUED if self.has_class("queued") else ""

    def set_queued(self, queued: bool) -> None:
        """Mark the question as waiting for the model (or no longer)."""
        self.set_class(queued, "queued")
        body = RichMarkdown(self.text)
        self.update(Group(body, Text(self.note, style="italic dim")) if queued else body)


class Note(Static):
    """A line or block from kbchat itself (command results, reports)."""


class EmptyState(Static):
    """What an empty chat shows: the three things to try first."""

    def __init__(self) -> None:
        super().__init__(EMPTY_STATE, classes="message empty-state")


class AnswerMessage(Vertical):
    """An answer to `question`: its text, growing as pieces stream in, then its provenance (the edits it
    was made with, whether it was cut short, turns left out of the context). `message_id` is the saved
    answer's id; `label` ("then:", "now:") tells answers to the same question apart.

    Two or three widgets (body, provenance, a label only when there is one), the text drawn by Rich's
    Markdown: a long chat mounts a hundred of these and every key press lays them all out."""

    def __init__(self, question: UserMessage | None = None, *, label: str = "", text: str = "") -> None:
        super().__init__(classes="message assistant streaming")
        self.question = question
        self.message_id: int | None = None
        self.text = text
        self.label: Static | None = Static(label, classes="answer-label") if label else None
        self.body = Static(RichMarkdown(text), classes="answer-body")
        self.meta = Static("", classes="answer-meta")
        self.meta.display = False

    @classmethod
    def saved(cls, message: ChatMessage, question: UserMessage | None, *, label: str = "") -> AnswerMessage:
        """A finished answer read back from a saved chat."""
        view = cls(question, label=label, text=message.content)
        view.remove_class("streaming")
        view.show_saved(message)
        return view

    def compose(self) -> ComposeResult:
        if self.label is not None:
            yield self.label
        yield self.body
        yield self.meta

    @property
    def streaming(self) -> bool:
        return self.has_class("streaming")

    def set_label(self, label: str) -> None:
        if self.label is None:
            self.label = Static(label, classes="answer-label")
            self.mount(self.label, before=self.body)
        self.label.update(label)
        self.label.display = bool(label)

    def show_saved(self, message: ChatMessage, *, cancelled: bool = False) -> None:
        """Show what `message` (this answer, saved) was made with; stale when an edit it used is gone."""
        self.message_id = message.id
        self._show_meta(provenance_content(message, cancelled=cancelled))
        self.set_class(bool(message.stale), "stale")

    def _show_meta(self, meta: Content) -> None:
        self.meta.update(meta)
        self.meta.display = bool(meta.plain)

    def _show_text(self, text: str) -> None:
        self.text = text
        self.body.update(RichMarkdown(text))

    def append(self, piece: str) -> bool:
        """Add a streamed piece to the text (call on the UI thread). True: a worker calling through
        `call_ui`, which gives None once the app is exiting, can tell the answer is still shown."""
        self._show_text(self.text + piece)
        return True

    def finish(self, answer: Answer | None, *, cancelled: bool, failed: bool = False,
               saved: ChatMessage | None = None) -> None:
        """Stop streaming: show the final text in full, with its provenance (`saved`: the answer as the
        service kept it, if it did)."""
        final = answer.text if answer is not None else self.text
        self._show_text(final or "*(no answer)*")
        if saved is not None:
            self.show_saved(saved, cancelled=cancelled)
        else:
            self._show_meta(provenance_content(None, answer, cancelled=cancelled, failed=failed))
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


class Lazy:
    """A widget made when first asked for (`get`), so that a long chat only builds what it shows."""

    def __init__(self, make: Callable[[], Widget]) -> None:
        self._make = make
        self._widget: Widget | None = None

    def get(self) -> Widget:
        if self._widget is None:
            self._widget = self._make()
        return self._widget


def lazy_messages(messages: Sequence[ChatMessage]) -> list[Lazy]:
    """The widgets of a saved conversation, each made on demand: each question, then its answers; when
    it was asked again, the earlier answers are labelled "then:" and the latest "now:"."""
    questions: dict[int, Lazy] = {}
    answers: dict[int, list[ChatMessage]] = {}
    for message in messages:
        if message.role == "user":
            questions[message.id] = Lazy(partial(UserMessage, message.content, message_id=message.id))
        elif message.reply_to is not None:
            answers.setdefault(message.reply_to, []).append(message)
    items: list[Lazy] = []
    for question_id, question in questions.items():
        items.append(question)
        given = answers.get(question_id, [])
        for i, answer in enumerate(given):
            label = "" if len(given) == 1 else "now:" if i == len(given) - 1 else "then:"
            items.append(Lazy(partial(_saved_answer, answer, question, label)))
    return items


def _saved_answer(answer: ChatMessage, question: Lazy, label: str) -> AnswerMessage:
    made = question.get()
    return AnswerMessage.saved(answer, made if isinstance(made, UserMessage) else None, label=label)


def render_messages(messages: Sequence[ChatMessage]) -> list[Widget]:
    """Every widget of a saved conversation at once (see `lazy_messages`)."""
    return [item.get() for item in lazy_messages(messages)]
