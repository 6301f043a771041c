"""The conversation as a focusable list: the keyboard selects one message at a time, and acts on it.

`MessageList` copies a message itself (`c`); correcting an answer (`e`) and asking a question again
(`r`) need the service and the input, so it asks its parent with a message (`CorrectionRequested`,
`AskAgainRequested`, `LeaveRequested`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from textual import events
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from kbchat.conversations.records import Chat, ChatMessage
from kbchat.tui.chat_format import copied_notice
from kbchat.tui.correction import correction_line
from kbchat.tui.messages import AnswerMessage, Lazy, UserMessage

Selectable = UserMessage | AnswerMessage
WINDOW = 40  # messages mounted when a chat opens (a tall terminal shows ~20): a long chat opens at once
CHUNK = 40  # earlier widgets mounted each time the top is reached
MAX_MOUNTED = 100  # past this, the latest messages are taken down (each key re-lays out every widget)


class EarlierNote(Static):
    """Stands above the mounted messages while earlier ones wait to be shown."""

    def show_count(self, count: int) -> None:
        self.update(f"↑ {count} earlier message{'s' if count != 1 else ''}: scroll up, or Home for all")


class LaterNote(Static):
    """Stands below the mounted messages when the latest ones were taken down."""

    def __init__(self) -> None:
        super().__init__("↓ later messages are hidden while you read back: End (or ↓ past here) shows the latest",
                         classes="message note earlier")


class MessageList(VerticalScroll, can_focus=True):
    """The conversation's widgets, scrolled; focused, one question or answer is selected (class
    `selected`). Keys: ↑/↓ or k/j move, Home/End go to the first/last, c copies, e corrects an answer
    (on a question: its latest answer), r asks a question (or an answer's question) again, Esc goes back
    to the input."""

    BINDINGS = [
        Binding("down,j", "move(1)", "Select", key_display="↑↓"),
        Binding("up,k", "move(-1)", "Previous", show=False),
        Binding("home,g", "edge(False)", "First", show=False),
        Binding("end,G", "edge(True)", "Last", show=False),
        Binding("c", "copy", "Copy"),
        Binding("e", "correct", "Correct"),
        Binding("r", "ask_again", "Ask again"),
        Binding("escape", "leave", "Input"),
    ]

    class CorrectionRequested(Message):
        """The user wants to correct an answer: `line` is the `/edit SUBJECT → FACT` guess to prefill."""

        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    class AskAgainRequested(Message):
        """The user wants saved question `question` answered again."""

        def __init__(self, question: UserMessage) -> None:
            super().__init__()
            self.question = question

    class LeaveRequested(Message):
        """The user is done with the messages (back to the input)."""

    class LatestRequested(Message):
        """The latest messages were taken down and the user wants them back (the chat is shown anew)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.selected: Selectable | None = None
        self.pending: list[Widget | Lazy] = []  # a long chat's earliest items, not mounted yet (oldest first)
        self._saved: dict[int, ChatMessage] = {}  # the latest provenance read, for answers made later
        self.detached = False  # the latest messages were taken down: the chat must be shown anew
        self._actions: tuple[bool, ...] = ()  # the key actions available when the footer last heard
        self._leaving: set[Widget] = set()  # removed but still children until Textual's removal ends

    # -- showing a chat -------------------------------------------------------------------------

    def show(self, items: Sequence[Widget | Lazy]) -> None:
        """Replace what is shown by `items`, making and mounting only the last WINDOW of them; the earlier
        ones are made and mounted when the user scrolls or moves up to them (`reveal_earlier`)."""
        self._remove(list(self.children))
        self.select(None)
        self._saved = {}
        self.detached = False
        cut = max(0, len(items) - WINDOW)
        self.pending = list(items[:cut])
        head = [EarlierNote(classes="message note earlier")] if self.pending else []
        self.mount_all([*head, *self._made(items[cut:])])
        for note in head:
            note.show_count(len(self.pending))

    def reveal_earlier(self, *, everything: bool = False) -> bool:
        """Mount the next CHUNK of earlier widgets (all with `everything`) above the shown ones, keeping
        the view where it was; False when there were none."""
        if not self.pending:
            return False
        if everything and len(self.pending) > MAX_MOUNTED:  # Home, far back: the chat's first messages
            take = self._made(self.pending[:MAX_MOUNTED])
            self.pending = []
            self._remove(list(self.children))
            self.mount_all(take)
            self._take_down_latest(force=True)
            return True
        take = self._made(self.pending if everything else self.pending[-CHUNK:])
        self.pending = self.pending[: len(self.pending) - len(take)]
        notes = list(self.query(EarlierNote))
        first = next((w for w in self._shown() if not isinstance(w, EarlierNote)), None)
        self.mount_all(take, before=first) if first is not None else self.mount_all(take)
        for note in notes:
            note.show_count(len(self.pending)) if self.pending else note.remove()
        self._take_down_latest()
        if first is not None and not everything:
            self.call_after_refresh(self.scroll_to_widget, first, animate=False, top=True)
        return True

    def _take_down_latest(self, *, force: bool = False) -> None:
        """Keep at most MAX_MOUNTED messages mounted by removing the latest ones (never while an answer
        streams); `force`: the latest are not shown whatever the count (after Home)."""
        shown = self.messages()
        if any(isinstance(w, AnswerMessage) and w.streaming for w in shown):
            return
        if len(shown) <= MAX_MOUNTED and not force:
            return
        children = self._shown()
        keep = children.index(shown[min(len(shown), MAX_MOUNTED) - 1]) + 1 if shown else 0
        self._remove([w for w in children[keep:] if not isinstance(w, LaterNote)])
        if self.selected is not None and self.selected in children[keep:]:
            self.selected = None
        if not self.detached:
            self.detached = True
            self.mount(LaterNote())

    def _at_latest(self) -> bool:
        """Whether the latest messages are shown; if not, ask for them (and say False)."""
        if self.detached:
            self.post_message(self.LatestRequested())
        return not self.detached

    def action_page_down(self) -> None:
        if self.scroll_y >= self.max_scroll_y and not self._at_latest():
            return
        super().action_page_down()

    def _made(self, items: Sequence[Widget | Lazy]) -> list[Widget]:
        widgets = [item.get() if isinstance(item, Lazy) else item for item in items]
        for view in widgets:
            if isinstance(view, AnswerMessage) and view.message_id in self._saved:
                view.show_saved(self._saved[view.message_id])
        return widgets

    def action_page_up(self) -> None:
        if self.scroll_y <= 0 and self.reveal_earlier():
            return
        super().action_page_up()

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if self.scroll_y <= 0:
            self.reveal_earlier()
        super()._on_mouse_scroll_up(event)

    # -- selection ------------------------------------------------------------------------------

    def messages(self) -> list[Selectable]:
        """The questions and answers shown, top to bottom (not those being removed)."""
        return [w for w in self._shown() if isinstance(w, UserMessage | AnswerMessage)]

    def _shown(self) -> list[Widget]:
        """The children, less those being removed (Textual removes them after this frame)."""
        children = list(self.children)
        self._leaving &= set(children)  # those gone for good need no remembering
        return [w for w in children if w not in self._leaving]

    def _remove(self, widgets: list[Widget]) -> None:
        """Take `widgets` down. Textual removes them after this frame: until then they are still
        children, and `messages` must not count them."""
        self._leaving.update(widgets)
        self.remove_children(widgets)

    def select(self, widget: Selectable | None, *, scroll: bool = True) -> None:
        """Make `widget` the selected message (None: none) and scroll it into view."""
        if self.selected is not None:
            self.selected.remove_class("selected")
        self.selected = widget
        if widget is not None:
            widget.add_class("selected")
            if scroll:
                self.scroll_to_widget(widget, animate=False, top=widget.outer_size.height > self.size.height)
        # The footer re-lays out the whole screen when told the bindings changed: tell it only when they did
        actions = tuple(bool(self.check_action(a, ())) for a in ("copy", "correct", "ask_again", "leave"))
        if actions != self._actions:
            self._actions = actions
            self.refresh_bindings()

    def select_message(self, message_id: int) -> bool:
        """Select the message saved as `message_id` (mounting earlier ones as needed); False when the
        chat shown does not have it."""
        while True:
            for widget in self.messages():
                if widget.message_id == message_id:
                    self.select(widget)
                    return True
            if not self.reveal_earlier():
                return False

    def on_focus(self) -> None:
        shown = self.messages()
        if self.selected not in shown:
            self.select(shown[-1] if shown else None)

    def _valid(self) -> Selectable | None:
        selected = self.selected
        return selected if selected is not None and selected.parent is self else None

    def action_move(self, step: int) -> None:
        shown = self.messages()
        if not shown:
            return
        current = self._valid()
        index = shown.index(current) + step if current in shown else len(shown) - 1
        if index >= len(shown) and not self._at_latest():
            return
        if index < 0 and self.reveal_earlier():
            shown = self.messages()
            index = shown.index(current) - 1 if current in shown else 0
        self.select(shown[max(0, min(index, len(shown) - 1))])

    def action_edge(self, last: bool) -> None:
        if last and not self._at_latest():
            return
        if not last:
            self.reveal_earlier(everything=True)
        shown = self.messages()
        if shown:
            self.select(shown[-1] if last else shown[0])

    # -- acting on the selection ----------------------------------------------------------------

    def question_of(self, widget: Selectable | None) -> UserMessage | None:
        """The question `widget` is (or answers)."""
        if isinstance(widget, AnswerMessage):
            return widget.question
        return widget

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        selected = self._valid()
        if action == "copy":
            return selected is not None and bool(selected.text)
        if action == "correct":
            answer = self.answer_of(selected)
            return answer is not None and not answer.streaming and bool(answer.text)
        if action == "ask_again":
            question = self.question_of(selected)
            return question is not None and question.message_id is not None
        if action == "leave":  # while an answer streams, Esc cancels it (the pane's binding)
            return not any(isinstance(w, AnswerMessage) and w.streaming for w in self.children)
        return True

    def action_copy(self) -> None:
        selected = self._valid()
        if selected is None:
            return
        self.app.copy_to_clipboard(selected.text)
        what = "the question" if isinstance(selected, UserMessage) else "the answer"
        notice, severity = copied_notice(what, os.environ)
        self.app.notify(notice, severity=severity, markup=False)  # type: ignore[arg-type]

    def answer_of(self, widget: Selectable | None) -> AnswerMessage | None:
        """The answer `widget` is, or, for a question, its latest answer shown (None: none)."""
        if isinstance(widget, AnswerMessage):
            return widget
        answers = self.answers_to(widget) if widget is not None else []
        return answers[-1] if answers else None

    def action_correct(self) -> None:
        answer = self.answer_of(self._valid())
        if answer is None or answer.streaming:
            return
        question = answer.question.text if answer.question is not None else ""
        self.post_message(self.CorrectionRequested(correction_line(question, answer.text)))

    def action_ask_again(self) -> None:
        question = self.question_of(self._valid())
        if question is not None and question.message_id is not None:
            self.post_message(self.AskAgainRequested(question))

    def action_leave(self) -> None:
        self.post_message(self.LeaveRequested())

    def show_provenance(self, chat: Chat) -> None:
        """Show on each saved answer what `chat` (read again) says its edits have become."""
        saved = {m.id: m for m in chat.messages}
        self._saved = saved
        for view in self.children:
            if isinstance(view, AnswerMessage) and view.message_id in saved:
                view.show_saved(saved[view.message_id])

    # -- answers to one question ----------------------------------------------------------------

    def answers_to(self, question: UserMessage) -> list[AnswerMessage]:
        """The answers shown for `question`, top to bottom."""
        return [w for w in self.children if isinstance(w, AnswerMessage) and w.question is question]

    def last_of(self, question: UserMessage) -> Widget:
        """The widget after which another answer to `question` goes."""
        shown = self.answers_to(question)
        return shown[-1] if shown else question
