"""Search every saved chat: type, see the matching messages (chat title, snippet), Enter opens one."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from kbchat.conversations.records import SearchHit
from kbchat.service import ChatService
from kbchat.tui.chat_format import hit_row
from kbchat.tui.workers import call_ui, report_error

LIMIT = 50


class SearchScreen(ModalScreen[SearchHit | None]):
    """Searches as the user types; dismisses with the chosen hit (None: closed)."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("down", "results", "Results", show=False),
    ]

    def __init__(self, service: ChatService, text: str = "") -> None:
        super().__init__()
        self.service = service
        self.text = text
        self.hits: list[SearchHit] = []
        self.searched: str | None = None  # the text the shown hits are for

    def compose(self) -> ComposeResult:
        with Vertical(id="search-box") as box:
            box.border_title = "Search the chats"
            yield Input(self.text, placeholder="text to find in any chat…", id="search-input")
            yield OptionList(id="search-results")
            yield Static("Type to search every saved chat; Enter or ↓ goes to the results.", id="search-summary")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        if self.text.strip():
            self._search(self.text)

    @on(Input.Changed, "#search-input")
    def _changed(self, event: Input.Changed) -> None:
        self._search(event.value)

    @on(Input.Submitted, "#search-input")
    def _submitted(self) -> None:
        self.action_results()

    def _search(self, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            self.show("", [])
            return
        service = self.service
        app = self.app

        def run() -> None:
            try:
                hits = service.search_chats(text, limit=LIMIT)
            except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
                report_error(app, error)
                return
            call_ui(app, self.show, text, hits)

        self.run_worker(run, thread=True, group="search", exclusive=True, exit_on_error=False)

    def show(self, text: str, hits: list[SearchHit]) -> None:
        """Show the `hits` for `text`, unless the input has moved on meanwhile."""
        if not self.is_attached or text != " ".join(self.query_one(Input).value.split()):
            return
        self.searched, self.hits = text, hits
        options = self.query_one(OptionList)
        options.set_options(Option(hit_row(hit, text), id=f"{hit.chat_id}:{hit.message_id}") for hit in hits)
        if hits:
            options.highlighted = 0
        summary = self.query_one("#search-summary", Static)
        if not text:
            summary.update("Type to search every saved chat; Enter or ↓ goes to the results.")
        elif not hits:
            summary.update(f"No message contains “{text}”.")
        else:
            more = " (the newest shown)" if len(hits) >= LIMIT else ""
            summary.update(f"{len(hits)} message{'' if len(hits) == 1 else 's'}{more} · Enter opens the chat there")

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.hits[event.option_index])

    def action_results(self) -> None:
        if self.hits:
            self.query_one(OptionList).focus()

    def action_close(self) -> None:
        self.dismiss(None)
