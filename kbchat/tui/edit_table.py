"""The rows of the audit table, as pure functions: which edits match the filters, in which order,
and the cells of each."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text

from kbchat.records import EditRecord
from kbchat.tui.format import checks_text, clip, metric_results, status_text

SORT_COLUMNS = ("id", "time", "subject", "target", "method", "status", "checks")


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


def row_cells(record: EditRecord, *, compact: bool = False) -> tuple[Text, ...]:
    """The table cells of one edit, in SORT_COLUMNS order; compact fits 80 columns."""
    when = record.created_at.strftime("%H:%M" if compact else "%Y-%m-%d %H:%M")
    width = 16 if compact else 40
    return (
        Text(str(record.id), justify="right"),
        Text(when, style="dim"),
        Text(clip(record.subject, width)),
        Text(clip(record.target, width - 2)),
        Text(record.method),
        status_text(record.status),
        checks_text(record.checks, compact=compact),
    )
