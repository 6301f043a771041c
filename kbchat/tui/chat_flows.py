"""The chat pane's saved-chat commands: the chat list (/chats), search (/search), /rename, /delete and
/export. `ChatFlows` works through what `SavedChatHost` offers (the chat pane implements it)."""

from __future__ import annotations

from typing import Protocol

from kbchat.conversations.records import Chat, ChatSummary, SearchHit
from kbchat.service import ChatService
from kbchat.tui import chat_actions
from kbchat.tui.chat_list import ChatListResult, ChatListScreen
from kbchat.tui.commands import Command, CommandError
from kbchat.tui.search import SearchScreen
from kbchat.tui.workers import WorkerOwner, run_in_worker


def last_chat(service: ChatService) -> Chat | None:
    """The most recently used saved chat, to reopen on start (None when there is none)."""
    chats = service.chats()
    return service.chat(chats[0].id) if chats else None


class SavedChatHost(WorkerOwner, Protocol):
    """What the saved-chat commands need from the chat pane: the chat shown, and ways to change it."""

    service: ChatService | None
    summary: ChatSummary | None  # the chat shown; None: a new one, not saved yet

    def may_switch(self) -> bool: ...

    def new_chat(self) -> None: ...

    def open_chat(self, chat_id: int, *, select: int | None = None) -> None: ...

    def chat_renamed(self, summary: ChatSummary) -> None: ...

    def select_message(self, message_id: int) -> bool: ...


class ChatFlows:
    """The saved-chat commands of one chat `host`."""

    def __init__(self, host: SavedChatHost) -> None:
        self.host = host

    def run(self, command: Command) -> None:
        """Carry out /chats, /search, /rename, /delete or /export (the last three on the chat shown)."""
        host, name, summary = self.host, command.name, self.host.summary
        service = host.service
        assert service is not None, "the chat has no service yet"
        if name == "chats":
            self.show_chats()
        elif name == "search":
            self.show_search(command.text)
        elif name == "rename" and summary is None:  # not saved yet: save it under that title
            run_in_worker(host, lambda: service.new_chat(command.text), host.chat_renamed)
        elif summary is None:
            host.app.notify(f"nothing to {name} yet: this chat is saved when you ask a question",
                            severity="warning")
        elif name == "rename":
            chat_actions.rename(host, service, summary.id, command.text, host.chat_renamed)
        elif name == "delete":
            chat_actions.delete_with_confirmation(host, service, summary, lambda _: host.new_chat())
        elif name == "export":
            chat_actions.export(host, service, summary.id, command.text, command.path)
        else:  # pragma: no cover - parse_command only sends the names above here
            raise CommandError(f"unhandled command {name}")

    def show_chats(self) -> None:
        """The chat list; then open, start or keep the chat it closes on."""
        host = self.host
        if host.service is not None and host.may_switch():
            current = host.summary.id if host.summary is not None else None
            host.app.push_screen(ChatListScreen(host.service, current), self._chat_list_closed)

    def _chat_list_closed(self, result: ChatListResult | None) -> None:
        host, shown = self.host, self.host.summary
        if result is None:
            return
        if result.open is not None and (shown is None or result.open != shown.id):
            host.open_chat(result.open)
        elif result.new:
            host.new_chat()
        elif result.chats is not None and shown is not None:
            now = next((s for s in result.chats if s.id == shown.id), None)
            if now is None:  # deleted from the list
                host.new_chat()
            else:
                host.chat_renamed(now)

    def show_search(self, text: str = "") -> None:
        """The search screen; the hit chosen opens its chat at that message."""
        host = self.host
        if host.service is not None and host.may_switch():
            host.app.push_screen(SearchScreen(host.service, text), self._search_closed)

    def _search_closed(self, hit: SearchHit | None) -> None:
        if hit is None:
            return
        shown = self.host.summary
        if not (shown is not None and hit.chat_id == shown.id and self.host.select_message(hit.message_id)):
            self.host.open_chat(hit.chat_id, select=hit.message_id)
