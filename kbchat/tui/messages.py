"""The widgets of the conversation: questions, streamed answers, notes, edit progress and edit cards."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Markdown, ProgressBar, Static
from textual.widgets.markdown import MarkdownStream

from kbchat.records import Answer, EditRecord, Progress
from kbchat.tui.format import answer_meta, edit_card_content, progress_line


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
