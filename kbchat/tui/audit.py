"""The audit screen: every edit in a sortable, filterable table; Enter opens one edit's detail, `r` reverts.

What the table shows (filters, order, cells) is computed by the pure functions of `edit_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Select, Static

from kbchat.config import STATUSES
from kbchat.records import EditRecord
from kbchat.service import ChatService
from kbchat.tui.detail import show_edit_detail
from kbchat.tui.edit_table import SORT_COLUMNS, filter_edits, row_cells, sort_edits
from kbchat.tui.revert import revert_with_confirmation
from kbchat.tui.workers import call_ui, report_error

COMPACT_BELOW = 110  # columns: narrower screens get the compact cells


class AuditScreen(Screen[None]):
    """Every edit: sortable (click a header or `s`), filterable by text and status, revertable (`r`)."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("r", "revert", "Revert"),
        Binding("s", "cycle_sort", "Sort"),
        Binding("S", "reverse_sort", "Reverse", show=False),
        Binding("t", "cycle_status", "Status"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("f5", "reload", "Reload", show=False),
    ]

    def __init__(self, service: ChatService) -> None:
        super().__init__()
        self.service = service
        self.records: list[EditRecord] = []
        self.shown: list[EditRecord] = []
        self.sort_column = "id"
        self.sort_reverse = False
        self._compact: bool | None = None
        self._owner: App[Any]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="audit-bar"):
            yield Input(placeholder="filter: subject, target, method, #id…", id="audit-filter")
            yield Select([(s, s) for s in STATUSES], prompt="any status", id="audit-status")
        table: DataTable[Text] = DataTable(id="audit-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("loading…", id="audit-summary")
        yield Footer()

    def on_mount(self) -> None:
        self._owner = self.app  # for workers, which may finish after this screen closed
        self.query_one(DataTable).focus()
        self.action_reload()

    # -- data ---------------------------------------------------------------------------------

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="audit-load", exit_on_error=False)
    def _load(self) -> None:
        app = self._owner
        try:
            records = self.service.edits()
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            report_error(app, error)
            return
        call_ui(app, self.set_records, records)

    def set_records(self, records: Sequence[EditRecord]) -> None:
        """Replace the table's data (keeps the sort, the filters and, if it is still shown, the cursor)."""
        self.records = list(records)
        self._rebuild()

    def _reverted(self, record: EditRecord) -> None:
        self.set_records([record if r.id == record.id else r for r in self.records])
        # Reverting a memory edit brings back the one it superseded: read the ledger again.
        if self.is_attached:
            self.action_reload()

    @property
    def status_filter(self) -> str | None:
        value = self.query_one("#audit-status", Select).value
        return value if isinstance(value, str) else None

    def _rebuild(self) -> None:
        table: DataTable[Text] = self.query_one(DataTable)
        compact = self.size.width < COMPACT_BELOW
        self._compact = compact
        keep = self.highlighted
        query = self.query_one("#audit-filter", Input).value
        self.shown = sort_edits(filter_edits(self.records, query, self.status_filter), self.sort_column,
                                reverse=self.sort_reverse)
        table.clear(columns=True)
        for column in SORT_COLUMNS:
            label = column
            if column == self.sort_column:
                label += " ▼" if self.sort_reverse else " ▲"
            table.add_column(label, key=column)
        for record in self.shown:
            table.add_row(*row_cells(record, compact=compact), key=str(record.id))
        if keep is not None and any(r.id == keep.id for r in self.shown):
            table.move_cursor(row=table.get_row_index(str(keep.id)))
        self.query_one("#audit-summary", Static).update(self._summary(query))

    def _summary(self, query: str) -> str:
        status = f" · status {self.status_filter}" if self.status_filter else ""
        text = f" · “{query}”" if query.strip() else ""
        direction = "descending" if self.sort_reverse else "ascending"
        return (f"{len(self.shown)} of {len(self.records)} edits{status}{text} · sorted by {self.sort_column} "
                f"{direction} · Enter: detail")

    @property
    def highlighted(self) -> EditRecord | None:
        """The record under the table's cursor, if any."""
        table = self.query_one(DataTable)
        if not self.shown or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def on_resize(self) -> None:
        if self._compact is not None and self._compact != (self.size.width < COMPACT_BELOW):
            self._rebuild()

    # -- events and actions ---------------------------------------------------------------------

    @on(Input.Changed, "#audit-filter")
    @on(Select.Changed, "#audit-status")
    def _filters_changed(self) -> None:
        self._rebuild()

    @on(Input.Submitted, "#audit-filter")
    def _filter_done(self) -> None:
        self.query_one(DataTable).focus()

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        self._rebuild()

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        edit_id = int(str(event.row_key.value))
        show_edit_detail(self, self.service, edit_id, lambda _: self.action_reload())

    def action_close(self) -> None:
        self.dismiss(None)

    def action_cycle_sort(self) -> None:
        index = SORT_COLUMNS.index(self.sort_column)
        self.sort_column, self.sort_reverse = SORT_COLUMNS[(index + 1) % len(SORT_COLUMNS)], False
        self._rebuild()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._rebuild()

    def action_cycle_status(self) -> None:
        select = self.query_one("#audit-status", Select)
        order: list[str | None] = [None, *STATUSES]
        following = order[(order.index(self.status_filter) + 1) % len(order)]
        if following is None:
            select.clear()
        else:
            select.value = following

    def action_focus_filter(self) -> None:
        self.query_one("#audit-filter", Input).focus()

    def action_revert(self) -> None:
        record = self.highlighted
        if record is None:
            self.notify("no edit selected", severity="warning")
            return
        revert_with_confirmation(self, self.service, record, self._reverted)
