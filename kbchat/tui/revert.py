"""Reverting an edit, with confirmation: the one flow the chat, the audit table and the detail share."""

from __future__ import annotations

from collections.abc import Callable

from kbchat.records import EditRecord
from kbchat.service import ChatService
from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.events import EditsChanged
from kbchat.tui.format import revert_confirmation
from kbchat.tui.workers import TaskGate, WorkerOwner, call_ui, report_error


def can_revert(record: EditRecord) -> bool:
    """Whether the service may revert `record`: only active edits can be reverted."""
    return record.status == "active"


def revert_with_confirmation(node: WorkerOwner, service: ChatService, record: EditRecord,
                             on_done: Callable[[EditRecord], object] | None = None) -> None:
    """Ask to confirm, then revert `record` in a thread worker owned by `node`.

    On success `on_done(reverted)` runs on the UI thread and the App receives EditsChanged; failures
    become error notifications.
    """
    app = node.app
    if not can_revert(record):
        app.notify(f"edit #{record.id} is {record.status}: only active edits can be reverted",
                   severity="warning", markup=False)
        return
    gate = app if isinstance(app, TaskGate) else None

    def run() -> None:
        try:
            reverted = service.revert(record.id)
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            report_error(app, error)
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

    app.push_screen(ConfirmScreen("Revert edit", revert_confirmation(record), confirm="Revert", variant="error"),
                    confirmed)
