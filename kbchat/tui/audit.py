"""The audit screen: every edit in a sortable, filterable table, one edit's checks in detail, revert.

The pure helpers at the top (check summaries, filtering, sorting, row cells) know nothing of the UI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.dom import DOMNode
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Select, Static

from kbchat.errors import KbchatError
from kbchat.records import CheckRecord, EditRecord
from kbchat.service import ChatService
from kbchat.tui.commands import STATUSES

METRIC_ABBREV = {
    "reliability": "rel",
    "generalization": "gen",
    "locality": "loc",
    "portability": "port",
    "fluency": "flu",
}
STATUS_STYLES = {
    "active": "bold green",
    "reverted": "dim",
    "committed": "bold cyan",
    "superseded": "yellow",
    "failed": "bold red",
}
REVERTIBLE = ("active", "committed")
SORT_COLUMNS = ("id", "time", "subject", "target", "method", "status", "checks")
RESULT_MARKS = {True: ("✓", "green"), False: ("✗", "bold red"), None: ("…", "dim")}

# -- pure helpers ---------------------------------------------------------------------------------


def metric_results(checks: Iterable[CheckRecord]) -> list[tuple[str, bool | None]]:
    """One result per metric, in first-seen order: False if any check failed, else None if any is
    pending, else True."""
    results: dict[str, bool | None] = {}
    for check in checks:
        seen = results.get(check.metric, True)
        if seen is False or check.passed is False:
            results[check.metric] = False
        elif seen is None or check.passed is None:
            results[check.metric] = None
        else:
            results[check.metric] = True
    return list(results.items())


def checks_text(checks: Iterable[CheckRecord], *, compact: bool = False) -> Text:
    """"rel ✓ gen ✗ loc ✓" coloured by result ("r✓ g✗ l✓" when compact); "pending" when there are none."""
    results = metric_results(checks)
    if not results:
        return Text("pending", style="dim")
    text = Text()
    for metric, passed in results:
        mark, style = RESULT_MARKS[passed]
        name = METRIC_ABBREV.get(metric, metric[:4])
        if text:
            text.append(" ")
        text.append(name[0] if compact else f"{name} ", style=style)
        text.append(mark, style=style)
    return text


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def edit_matches(record: EditRecord, query: str) -> bool:
    """Whether `query` (case-insensitive) occurs in the edit's id ("#3"), text, subject, target,
    method or status."""
    query = query.strip().casefold()
    if not query:
        return True
    haystack = " ".join((f"#{record.id}", record.raw_text, record.subject, record.prompt, record.target,
                         record.method, record.status))
    return query in haystack.casefold()


def filter_edits(records: Iterable[EditRecord], query: str = "", status: str | None = None) -> list[EditRecord]:
    """The records matching `query` (see `edit_matches`) and, if given, `status`."""
    return [r for r in records if (status is None or r.status == status) and edit_matches(r, query)]


def _checks_rank(record: EditRecord) -> tuple[int, int]:
    results = [passed for _, passed in metric_results(record.checks)]
    # Failures first when ascending, then pending, then all-passed: the edits needing a look.
    return (-results.count(False), results.count(None))


_SORT_KEYS: dict[str, Callable[[EditRecord], Any]] = {
    "id": lambda r: r.id,
    "time": lambda r: (r.created_at, r.id),
    "subject": lambda r: (r.subject.casefold(), r.id),
    "target": lambda r: (r.target.casefold(), r.id),
    "method": lambda r: (r.method, r.id),
    "status": lambda r: (r.status, r.id),
    "checks": lambda r: (_checks_rank(r), r.id),
}


def sort_edits(records: Iterable[EditRecord], column: str, *, reverse: bool = False) -> list[EditRecord]:
    """The records sorted by one of SORT_COLUMNS (ties broken by id)."""
    return sorted(records, key=_SORT_KEYS[column], reverse=reverse)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def row_cells(record: EditRecord, *, compact: bool = False) -> tuple[Text, ...]:
    """The table cells of one edit, in SORT_COLUMNS order; compact fits 80 columns."""
    when = record.created_at.strftime("%H:%M" if compact else "%Y-%m-%d %H:%M")
    width = 16 if compact else 40
    return (
        Text(str(record.id), justify="right"),
        Text(when, style="dim"),
        Text(_clip(record.subject, width)),
        Text(_clip(record.target, width - 2)),
        Text(record.method),
        status_text(record.status),
        checks_text(record.checks, compact=compact),
    )


def edit_summary(record: EditRecord) -> Text:
    """One line: "#3 active serac  Eiffel Tower → Rome  rel ✓ gen ✓ loc ✓"."""
    return Text.assemble(
        (f"#{record.id}", "bold"), " ", status_text(record.status), " ", (record.method, "italic"), "  ",
        record.subject, " → ", (record.target, "bold"), "  ", checks_text(record.checks),
    )


def check_content(check: CheckRecord) -> Content:
    """One check in full: result, metric, mode, probe, expected, before, after, score."""
    mark, style = RESULT_MARKS[check.passed]
    verdict = {True: "pass", False: "FAIL", None: "pending"}[check.passed]
    score = "" if check.score is None else f"  score {check.score:.2f}"
    lines = [
        Content.assemble((f"{mark} {verdict}", style), "  ", (check.metric, "bold"), f"  · {check.mode}{score}"),
        Content.assemble(("  probe     ", "dim"), check.probe),
        Content.assemble(("  expected  ", "dim"), check.expected),
        Content.assemble(("  before    ", "dim"), check.before if check.before is not None else "—"),
        Content.assemble(("  after     ", "dim"), check.after if check.after is not None else "—"),
    ]
    return Content("\n").join(lines)


def edit_fields(record: EditRecord) -> Content:
    """The edit's own fields, one per line, for the detail view."""
    rows: list[tuple[str, str | Content]] = [
        ("status", Content.styled(record.status, STATUS_STYLES.get(record.status, ""))),
        ("created", record.created_at.strftime("%Y-%m-%d %H:%M:%S")),
        ("request", record.raw_text),
        ("subject", record.subject),
        ("prompt", record.prompt),
        ("target", Content.styled(record.target, "bold")),
        ("was", record.target_true or "—"),
        ("method", f"{record.method} ({record.kind})"),
    ]
    if record.reverted_at:
        rows.append(("reverted", record.reverted_at.strftime("%Y-%m-%d %H:%M:%S")))
    if record.superseded_by is not None:
        rows.append(("superseded by", f"#{record.superseded_by}"))
    if record.error:
        rows.append(("error", Content.styled(record.error, "red")))
    if record.notes:
        rows.append(("notes", record.notes))
    return Content("\n").join(Content.assemble((f"{name:<13} ", "dim"), value) for name, value in rows)


# -- shared flows -----------------------------------------------------------------------------------


class EditsChanged(Message):
    """The ledger changed (edit, revert, commit): the header count and open views should refresh.

    `note` is a line for the chat to report, if any; `record` the changed edit, if there is one.
    """

    def __init__(self, note: str | None = None, record: EditRecord | None = None) -> None:
        super().__init__()
        self.note = note
        self.record = record


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True on confirm."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: Content | str, *, confirm: str = "Confirm",
                 variant: str = "primary") -> None:
        super().__init__(classes="confirm")
        self._title = title
        self._body = body
        self._confirm = confirm
        self._variant = variant

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = self._title
            yield Static(self._body, id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self._confirm} (y)", id="yes", variant=self._variant)  # type: ignore[arg-type]
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


@runtime_checkable
class TaskGate(Protocol):
    """One long operation on the service at a time (the App implements it).

    `begin_task` runs on the UI thread and says whether the task may start; `task_done` may run on
    any thread; `exiting` turns true once the UI is going away.
    """

    @property
    def exiting(self) -> bool: ...

    def begin_task(self, task: str) -> bool: ...

    def task_done(self) -> None: ...


def call_ui(app: App[Any], callback: Callable[..., Any], *args: Any) -> Any:
    """From a worker thread: run `callback(*args)` on the UI thread and return its result.

    Once the app is exiting this does nothing and returns None, so a worker finishing late neither
    raises nor waits on a loop that no longer runs.
    """
    if isinstance(app, TaskGate) and app.exiting:
        return None
    try:
        return app.call_from_thread(callback, *args)
    except RuntimeError:
        if (isinstance(app, TaskGate) and app.exiting) or not app.is_running:
            return None
        raise


def notify_error(app: App[Any], error: BaseException) -> None:
    """Show a failure as an error notification: KbchatError by its message, anything else with its type."""
    message = str(error) if isinstance(error, KbchatError) else f"{type(error).__name__}: {error}"
    app.notify(message or type(error).__name__, severity="error", markup=False, timeout=8)


def revert_with_confirmation(node: DOMNode, service: ChatService, record: EditRecord,
                             on_done: Callable[[EditRecord], object] | None = None) -> None:
    """Ask to confirm, then revert `record` in a thread worker owned by `node`.

    On success `on_done(reverted)` runs on the UI thread and the App receives EditsChanged; failures
    become error notifications.
    """
    if record.status not in REVERTIBLE:
        node.app.notify(f"edit #{record.id} is {record.status}: only active or committed edits can be "
                        "reverted", severity="warning", markup=False)
        return
    body = Content.assemble(
        "Revert edit ", (f"#{record.id}", "bold"), f" ({record.method})?\n\n",
        record.subject, " → ", (record.target, "bold"), "\n\nThe model will answer as before this edit.",
    )
    app = node.app
    gate = app if isinstance(app, TaskGate) else None

    def run() -> None:
        try:
            reverted = service.revert(record.id)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            call_ui(app, notify_error, app, error)
            return
        finally:
            if gate is not None:
                gate.task_done()
        if on_done is not None:
            call_ui(app, on_done, reverted)
        # To the App itself: `node` may be a screen that has closed meanwhile.
        app.post_message(EditsChanged(f"Reverted edit #{reverted.id}: {reverted.subject} → {reverted.target}",
                                      reverted))

    def confirmed(answer: bool | None) -> None:
        if answer and (gate is None or gate.begin_task(f"reverting edit #{record.id}")):
            node.run_worker(run, thread=True, group="revert", exit_on_error=False)

    app.push_screen(ConfirmScreen("Revert edit", body, confirm="Revert", variant="error"), confirmed)


def show_edit_detail(node: DOMNode, service: ChatService, edit_id: int,
                     on_close: Callable[[Any], object] | None = None) -> None:
    """Fetch edit `edit_id` with `service.get_edit` in a worker, then push its detail screen."""
    app = node.app

    def run() -> None:
        try:
            record = service.get_edit(edit_id)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            call_ui(app, notify_error, app, error)
            return
        call_ui(app, app.push_screen, EditDetailScreen(service, record), on_close)

    node.run_worker(run, thread=True, group="detail", exit_on_error=False)


# -- screens ----------------------------------------------------------------------------------------


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
            return self.record.status in REVERTIBLE
        return True

    def action_close(self) -> None:
        self.dismiss(None)

    def action_revert(self) -> None:
        revert_with_confirmation(self, self.service, self.record, self._show)


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
            call_ui(app, notify_error, app, error)
            return
        call_ui(app, self.set_records, records)

    def set_records(self, records: Sequence[EditRecord]) -> None:
        """Replace the table's data (keeps the sort, the filters and, if it is still shown, the cursor)."""
        self.records = list(records)
        self._rebuild()

    def _replace(self, record: EditRecord) -> None:
        self.set_records([record if r.id == record.id else r for r in self.records])

    @property
    def status_filter(self) -> str | None:
        value = self.query_one("#audit-status", Select).value
        return value if isinstance(value, str) else None

    def _rebuild(self) -> None:
        table: DataTable[Text] = self.query_one(DataTable)
        compact = self.size.width < 110
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
        status = f" · status {self.status_filter}" if self.status_filter else ""
        text = f" · “{query}”" if query.strip() else ""
        direction = "descending" if self.sort_reverse else "ascending"
        self.query_one("#audit-summary", Static).update(
            f"{len(self.shown)} of {len(self.records)} edits{status}{text} · sorted by {self.sort_column} "
            f"{direction} · Enter: detail"
        )

    @property
    def highlighted(self) -> EditRecord | None:
        """The record under the table's cursor, if any."""
        table = self.query_one(DataTable)
        if not self.shown or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def on_resize(self) -> None:
        if self._compact is not None and self._compact != (self.size.width < 110):
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
        revert_with_confirmation(self, self.service, record, self._replace)
