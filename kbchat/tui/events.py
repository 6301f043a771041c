"""Messages the screens send the App."""

from __future__ import annotations

from textual.message import Message

from kbchat.records import EditRecord


class EditsChanged(Message):
    """The ledger changed (edit, revert, commit): the header count and open views should refresh.

    `note` is a line for the chat to report, if any; `record` the changed edit, if there is one.
    """

    def __init__(self, note: str | None = None, record: EditRecord | None = None) -> None:
        super().__init__()
        self.note = note
        self.record = record


class AuditRequested(Message):
    """The user asked for the audit screen (`edit_id` None) or one edit's detail."""

    def __init__(self, edit_id: int | None) -> None:
        super().__init__()
        self.edit_id = edit_id
