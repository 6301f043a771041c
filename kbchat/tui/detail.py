"""One edit in detail: its fields and every check, with revert."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, Static

from kbchat.records import EditRecord
from kbchat.service import ChatService
from kbchat.tui.format import check_content, edit_fields
from kbchat.tui.revert import can_revert, revert_with_confirmation
from kbchat.tui.workers import call_ui, report_error


class EditDetailScreen(ModalScreen[None]):
    """One edit: its fields and every check with expected, before, after, pass/fail and mode."""

    BINDINGS = [
        Binding("escape,q", "close", "Close"),
        Binding("r", "revert", "Revert"),
    ]

    def __init__(self, service: ChatService, record: EditRecord) -> None:
        super().__init__()
        self.service = service
        self.record = record

    def compose(self) -> ComposeResult:
        with Vertical(id="detail"):
            with VerticalScroll(id="detail-scroll"):
                yield Static(id="detail-fields")
                yield Label("Checks", id="detail-checks-title")
                yield Vertical(id="detail-checks")
        yield Footer()

    def on_mount(self) -> None:
        self._show(self.record)

    def _show(self, record: EditRecord) -> None:
        self.record = record
        box = self.query_one("#detail")
        box.border_title = f"Edit #{record.id} · {record.subject} → {record.target}"
        self.query_one("#detail-fields", Static).update(edit_fields(record))
        checks = self.query_one("#detail-checks")
        checks.remove_children()
        if record.checks:
            checks.mount_all(Static(check_content(c), classes="check") for c in record.checks)
        else:
            checks.mount(Static("No checks yet (pending).", classes="check pending"))
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "revert":
            return can_revert(self.record)
        return True

    def action_close(self) -> None:
        self.dismiss(None)

    def action_revert(self) -> None:
        revert_with_confirmation(self, self.service, self.record, self._show)


def show_edit_detail(node: DOMNode, service: ChatService, edit_id: int,
                     on_close: Callable[[Any], object] | None = None) -> None:
    """Fetch edit `edit_id` with `service.get_edit` in a worker, then push its detail screen."""
    app = node.app

    def run() -> None:
        try:
            record = service.get_edit(edit_id)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            report_error(app, error)
            return
        call_ui(app, app.push_screen, EditDetailScreen(service, record), on_close)

    node.run_worker(run, thread=True, group="detail", exit_on_error=False)
