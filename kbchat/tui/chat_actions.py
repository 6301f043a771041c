"""Renaming, deleting and exporting a saved chat: the flows the chat pane and the chat list share.

Each runs the service call in a thread worker owned by `node`; failures become error notifications.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.content import Content

from kbchat.conversations.export import render
from kbchat.conversations.records import ChatSummary
from kbchat.service import ChatService
from kbchat.tui.chat_format import chat_title, export_path
from kbchat.tui.dialogs import ConfirmScreen, PromptScreen
from kbchat.tui.workers import WorkerOwner, run_in_worker


def rename(node: WorkerOwner, service: ChatService, chat_id: int, title: str,
           on_done: Callable[[ChatSummary], object] | None = None) -> None:
    """Rename chat `chat_id` to `title`; then `on_done(summary)` and a notification."""
    def done(summary: ChatSummary) -> None:
        node.app.notify(f"Renamed chat #{summary.id} to “{chat_title(summary)}”", markup=False)
        if on_done is not None:
            on_done(summary)

    run_in_worker(node, lambda: service.rename_chat(chat_id, title), done, group="chats")


def rename_with_prompt(node: WorkerOwner, service: ChatService, summary: ChatSummary,
                       on_done: Callable[[ChatSummary], object] | None = None) -> None:
    """Ask for a new title (prefilled with the current one), then `rename`."""
    def answered(title: str | None) -> None:
        if title and title != summary.title:
            rename(node, service, summary.id, title, on_done)

    node.app.push_screen(PromptScreen("Rename chat", f"A new title for chat #{summary.id}:", summary.title,
                                      confirm="Rename"), answered)


def delete_with_confirmation(node: WorkerOwner, service: ChatService, summary: ChatSummary,
                             on_done: Callable[[int], object] | None = None) -> None:
    """Ask to confirm, then delete the chat; `on_done(chat_id)` after. Cancelling changes nothing."""
    body = Content.assemble(
        "Delete chat ", (f"#{summary.id}", "bold"), " “", (chat_title(summary), "bold"), "”",
        f" and its {summary.messages} message{'' if summary.messages == 1 else 's'}?\n\n",
        ("The edits made while chatting stay as they are (see the audit).", "dim"),
    )

    def done(_: None) -> None:
        node.app.notify(f"Deleted chat #{summary.id} “{chat_title(summary)}”", markup=False)
        if on_done is not None:
            on_done(summary.id)

    def confirmed(answer: bool | None) -> None:
        if answer:
            run_in_worker(node, lambda: service.delete_chat(summary.id), done, group="chats")

    node.app.push_screen(ConfirmScreen("Delete chat", body, confirm="Delete", variant="error"), confirmed)


def export(node: WorkerOwner, service: ChatService, chat_id: int, format: str, path: str | None = None,
           cwd: Path | None = None) -> None:
    """Write chat `chat_id` as Markdown ("md") or JSON ("json") to `path` (default: `kbchat-chat-<id>.<format>`
    in `cwd`, the current folder), then name the file in a notification."""
    folder = cwd or Path.cwd()

    def write() -> Path:
        target = export_path(chat_id, format, path, folder)
        target.write_text(render(service.chat(chat_id), format), encoding="utf-8")
        return target

    def done(target: Path) -> None:
        kind = "Markdown" if format == "md" else "JSON"
        node.app.notify(f"Exported chat #{chat_id} as {kind} to {target}", markup=False, timeout=8)

    run_in_worker(node, write, done, group="export")
