"""The kbchat App: opens the service in a worker, then hosts the chat; bindings and palette commands.

The App stays thin: the conversation lives in `ChatPane`, the ledger views in the audit screens.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Vertical
from textual.widgets import Footer, Header, Label, ProgressBar

from kbchat.config import ALL_METHODS
from kbchat.conversations.records import Chat
from kbchat.records import EngineInfo, Progress, ProgressFn
from kbchat.service import Capabilities, ChatService
from kbchat.tui.audit import AuditScreen
from kbchat.tui.chat import ChatPane
from kbchat.tui.chat_flows import last_chat
from kbchat.tui.commands import Command
from kbchat.tui.detail import show_edit_detail
from kbchat.tui.events import AuditRequested, EditsChanged
from kbchat.tui.format import progress_line
from kbchat.tui.workers import call_ui, notify_error, report_error

OpenService = Callable[[ProgressFn], ChatService]


def short_path(path: str) -> str:
    """`path` with the home directory written as ~."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home):]
    return path


def info_line(info: EngineInfo) -> str:
    """The header subtitle: active edits · model · device · ledger (the count first: it must survive
    truncation at 80 columns)."""
    count = info.active_edits
    return (f"{count} active edit{'' if count == 1 else 's'} · {info.model} · {info.device} · "
            f"{short_path(info.ledger)}")


class KbchatCommands(Provider):
    """Command palette entries: the chat's slash commands and, on the audit screen, its actions."""

    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app = self.app
        assert isinstance(app, KbchatApp)
        screen = self.screen
        if isinstance(screen, AuditScreen):
            return [
                ("Audit: revert the selected edit", screen.action_revert, "asks for confirmation"),
                ("Audit: sort by the next column", screen.action_cycle_sort, "or click a column header"),
                ("Audit: reverse the sort", screen.action_reverse_sort, "ascending ⇄ descending"),
                ("Audit: next status filter", screen.action_cycle_status, "any → active → reverted → …"),
                ("Audit: filter by text", screen.action_focus_filter, "subject, target, method, #id"),
                ("Audit: reload", screen.action_reload, "read the ledger again"),
                ("Audit: back to the chat", screen.action_close, ""),
            ]
        if screen is not app.screen_stack[0]:
            return []
        run = app.run_chat_command
        commands: list[tuple[str, Callable[[], object], str]] = [
            ("Audit: open the audit screen", app.action_audit, "every edit, its checks, revert"),
            ("Edits: list the edits in the chat", partial(run, Command("edits")), "/edits"),
            ("Commit the active edits", partial(run, Command("commit")), "/commit"),
            ("Chats: list the saved chats", partial(run, Command("chats")), "/chats · Ctrl+O: open, rename, delete"),
            ("Chats: start a new chat", partial(run, Command("new")), "/new · Ctrl+N (the others stay saved)"),
            ("Chats: rename this chat", partial(app.chat.prefill, "/rename "), "/rename TITLE"),
            ("Chats: delete this chat", partial(run, Command("delete")), "/delete (asks for confirmation)"),
            ("Chats: search every chat", partial(run, Command("search")), "/search TEXT · Ctrl+F"),
            ("Chats: export this chat as Markdown", partial(run, Command("export", text="md")), "/export md [PATH]"),
            ("Chats: export this chat as JSON", partial(run, Command("export", text="json")), "/export json [PATH]"),
            ("Help: list the commands and keys", partial(run, Command("help")), "/help · F1"),
            ("Cancel the running answer", app.chat.action_cancel, "Esc"),
        ]
        commands += [
            (f"Method: use {m} for /edit", partial(app.run_chat_command, Command("method", method=m)),
             f"/method {m}")
            for m in (app.capabilities.methods if app.capabilities is not None else ALL_METHODS)
        ]
        return commands

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class KbchatApp(App[None]):
    """Chat with a ChatService and correct what it knows.

    `open_service(progress)` runs in a thread worker on mount (it may load and dequantize a model);
    its Progress events drive a progress bar. The service is closed on exit unless `close_service`
    is False (for a service owned by someone else, e.g. a test fixture).
    """

    CSS_PATH = Path(__file__).with_name("kbchat.tcss")  # absolute: subclasses elsewhere find it too
    COMMANDS = App.COMMANDS | {KbchatCommands}
    BINDINGS = [
        Binding("ctrl+a", "audit", "Audit", priority=True),
        Binding("ctrl+o", "chats", "Chats"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("ctrl+f", "search", "Search"),
        Binding("f1", "help", "Help"),
        Binding("ctrl+l", "new_chat", "New chat", show=False),
    ]
    CHAT_ACTIONS = ("audit", "chats", "new_chat", "search")  # need the service, and the chat on screen

    def __init__(self, open_service: OpenService, *, title: str = "kbchat", close_service: bool = True) -> None:
        super().__init__()
        self._open_service = open_service
        self._close_service = close_service
        self.title = title
        self.sub_title = "opening…"
        self.service: ChatService | None = None
        self.capabilities: Capabilities | None = None  # asked once, when the service opens
        self.busy: str | None = None  # the long operation running on the service, if any
        self._exiting = False
        self._service_closed = False
        # Guards busy/_exiting/_service_closed: workers end tasks from their threads, possibly after exit.
        self._lifecycle = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="opening"):
            yield Label("Opening kbchat…", id="opening-status")
            yield ProgressBar(total=None, show_eta=False, id="opening-bar")
        yield ChatPane(id="chat")
        yield Footer()

    @property
    def chat(self) -> ChatPane:
        return self.query_one("#chat", ChatPane)

    def on_mount(self) -> None:
        self._open()

    # -- opening and closing --------------------------------------------------------------------

    @work(thread=True, group="open", exit_on_error=False)
    def _open(self) -> None:
        def progress(event: Progress) -> None:
            call_ui(self, self._opening_progress, event)

        try:
            service, capabilities, problems = self._connect(progress)
        except Exception as error:  # noqa: BLE001 - shown in the UI instead of a traceback
            call_ui(self, self._open_failed, error)
            return
        with self._lifecycle:
            self.service = service
            exiting = self._exiting
        if exiting:  # the user quit while the model was loading
            self._close_once()
            return
        chat = None
        try:  # the last chat is reopened; without it the app still works (in a new chat)
            chat = last_chat(service)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            report_error(self, error)
        call_ui(self, self._opened, service, capabilities, problems, chat)

    def _connect(self, progress: ProgressFn) -> tuple[ChatService, Capabilities, list[str]]:
        """Open the service and ask what it can do and what it found wrong (worker thread)."""
        service = self._open_service(progress)
        try:
            return service, service.capabilities(), service.problems()
        except BaseException:
            if self._close_service:  # opened, but unusable: do not leave it open
                with contextlib.suppress(Exception):
                    service.close()
            raise

    def _opening_progress(self, event: Progress) -> None:
        self.query_one("#opening-status", Label).update(progress_line(event))
        bar = self.query_one("#opening-bar", ProgressBar)
        if event.total:
            bar.update(total=event.total, progress=event.step)
        else:
            bar.update(total=None)

    def _opened(self, service: ChatService, capabilities: Capabilities, problems: list[str],
                chat: Chat | None) -> None:
        self.capabilities = capabilities
        self.query_one("#opening").remove()
        self.chat.attach(service, capabilities, chat)
        for problem in problems:  # integrity problems are reported, never ignored
            self.chat.add_note(f"Problem found on opening: {problem}", classes="error")
        self.refresh_info()
        self.refresh_bindings()

    def _open_failed(self, error: BaseException) -> None:
        self.query_one("#opening-bar").remove()
        status = self.query_one("#opening-status", Label)
        status.update(f"Could not open kbchat: {error}")
        status.add_class("error")
        self.sub_title = "not open"
        self.chat.open_failed()
        notify_error(self, error)

    def _close_once(self) -> None:
        """Close the service (if it is ours to close), once, from whichever thread gets here last."""
        with self._lifecycle:
            if self._service_closed or self.service is None:
                return
            self._service_closed = True
            service = self.service
        if not self._close_service:
            return
        try:
            service.close()
        except Exception as error:  # noqa: BLE001 - closing must not hide the way out
            self.log.error(f"closing the service failed: {error!r}")

    def on_unmount(self) -> None:
        for pane in self.query(ChatPane):
            pane.cancel_all()
        with self._lifecycle:
            self._exiting = True
            idle = self.busy is None
        # A running edit or commit cannot be interrupted: its worker closes the service when it ends.
        if idle:
            self._close_once()

    # -- state shared by the screens ------------------------------------------------------------

    @property
    def exiting(self) -> bool:
        """True once the UI is going away (workers then stop reporting to it)."""
        return self._exiting

    def begin_task(self, task: str) -> bool:
        """Claim the service for a long operation (UI thread); warn and return False if one runs."""
        with self._lifecycle:
            running = self.busy
            if running is None and not self._exiting:
                self.busy = task
        if running is not None:
            self.notify(f"wait: {running} (Esc cancels an answer)", severity="warning", markup=False)
            return False
        return not self._exiting

    def task_done(self) -> None:
        """End the long operation (any thread); after exit, the last one out closes the service."""
        with self._lifecycle:
            self.busy = None
            exiting = self._exiting
        if exiting:
            self._close_once()

    @work(thread=True, group="info", exclusive=True, exit_on_error=False)
    def refresh_info(self) -> None:
        """Re-read `service.info()` into the header subtitle."""
        service = self.service
        if service is None:
            return
        try:
            line = info_line(service.info())
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            report_error(self, error)
            return
        call_ui(self, setattr, self, "sub_title", line)

    @on(EditsChanged)
    def _edits_changed(self, event: EditsChanged) -> None:
        self.refresh_info()
        self.chat.refresh_provenance()  # answers made with an edit that changed say so
        if event.record is not None:
            self.chat.update_cards(event.record)
        if event.note:
            self.chat.add_note(event.note)

    @on(AuditRequested)
    def _audit_requested(self, event: AuditRequested) -> None:
        self.action_audit(event.edit_id)

    # -- actions (bindings, palette, links in the chat) -----------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.CHAT_ACTIONS:
            # Only from the chat itself: not over a dialog or the audit screen.
            return self.service is not None and self.screen is self.screen_stack[0]
        if action == "help":
            return self.screen is self.screen_stack[0]
        return True

    def action_audit(self, edit_id: int | None = None) -> None:
        """Open the audit screen, or directly the detail of edit `edit_id`."""
        if self.service is None:
            self.notify("the model is still opening", severity="warning")
            return
        if edit_id is not None:
            show_edit_detail(self, self.service, int(edit_id))
        elif not isinstance(self.screen, AuditScreen):
            self.push_screen(AuditScreen(self.service), lambda _: self.refresh_info())

    def action_chats(self) -> None:
        self.run_chat_command(Command("chats"))

    def action_new_chat(self) -> None:
        self.run_chat_command(Command("new"))

    def action_search(self) -> None:
        self.run_chat_command(Command("search"))

    def action_help(self) -> None:
        self.run_chat_command(Command("help"))

    def run_chat_command(self, command: Command) -> None:
        self.chat.run_command(command)


def run(open_service: OpenService, *, title: str = "kbchat") -> None:
    """Run the TUI until the user quits; `open_service(progress)` is called in a worker on start."""
    KbchatApp(open_service, title=title).run()
