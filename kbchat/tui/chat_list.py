"""The saved chats as a list: open one (Enter), start a new one (n), rename (r) or delete (d, asks)."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, OptionList, Static
from textual.widgets.option_list import Option

from kbchat.conversations.records import ChatSummary
from kbchat.service import ChatService
from kbchat.tui.chat_actions import delete_with_confirmation, rename_with_prompt
from kbchat.tui.chat_format import chat_row
from kbchat.tui.workers import run_in_worker


@dataclass(frozen=True)
class ChatListResult:
    """How the list closed: `open` a chat, or start a `new` one, or neither (closed). `chats` is the list
    as last shown, so the caller sees renames and deletions (its own chat may be gone)."""

    open: int | None
    new: bool
    chats: tuple[ChatSummary, ...] | None  # None: never loaded


class ChatListScreen(ModalScreen[ChatListResult]):
    """Every saved chat, the most recently used first; `current` (the chat being shown) is marked."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("n", "new", "New chat"),
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
    ]

    def __init__(self, service: ChatService, current: int | None) -> None:
        super().__init__()
        self.service = service
        self.current = current
        self.chats: tuple[ChatSummary, ...] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="chat-list-box") as box:
            box.border_title = "Chats"
            yield OptionList(id="chat-list")
            yield Static("loading…", id="chat-list-summary")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()
        self.reload()

    def reload(self) -> None:
        """Read the chats again (after opening, a rename or a deletion)."""
        run_in_worker(self, self.service.chats, self.show, group="chat-list")

    def show(self, chats: list[ChatSummary]) -> None:
        """Show `chats`, keeping the highlight on the same chat when it is still there."""
        if not self.is_attached:
            return
        options = self.query_one(OptionList)
        keep = self.highlighted
        self.chats = tuple(chats)
        options.set_options(Option(chat_row(s, current=s.id == self.current), id=str(s.id)) for s in chats)
        ids = [s.id for s in chats]
        target = keep.id if keep is not None and keep.id in ids else self.current
        if target in ids:
            options.highlighted = ids.index(target)
        elif ids:
            options.highlighted = 0
        count = f"{len(chats)} saved chat{'' if len(chats) == 1 else 's'}"
        hint = "Enter opens · n new · r rename · d delete" if chats else "ask a question to start one (n: new chat)"
        self.query_one("#chat-list-summary", Static).update(f"{count} · {hint}")

    @property
    def highlighted(self) -> ChatSummary | None:
        """The chat under the cursor, if any."""
        options = self.query_one(OptionList)
        if self.chats is None or options.highlighted is None or not 0 <= options.highlighted < len(self.chats):
            return None
        return self.chats[options.highlighted]

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(ChatListResult(int(str(event.option.id)), False, self.chats))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("rename", "delete"):
            return self.highlighted is not None
        return True

    def action_close(self) -> None:
        self.dismiss(ChatListResult(None, False, self.chats))

    def action_new(self) -> None:
        self.dismiss(ChatListResult(None, True, self.chats))

    def action_rename(self) -> None:
        if (summary := self.highlighted) is not None:
            rename_with_prompt(self, self.service, summary, lambda _: self.reload())

    def action_delete(self) -> None:
        if (summary := self.highlighted) is not None:
            delete_with_confirmation(self, self.service, summary, lambda _: self.reload())
