"""Service calls run in thread workers; these helpers carry their results and failures back to the UI.

`TaskGate` is the one thing the widgets need from the App (one long operation at a time, and whether
the UI is going away); the App implements it, so no widget has to import the App.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from textual.app import App
from textual.worker import Worker

from kbchat.errors import KbchatError

T = TypeVar("T")


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


class WorkerOwner(Protocol):
    """What runs a thread worker: any widget or screen (the names are Textual's own)."""

    @property
    def app(self) -> App[Any]: ...

    def run_worker(self, work: Callable[[], Any], *, thread: bool = ..., group: str = ...,
                   exit_on_error: bool = ...) -> Worker[Any]: ...


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


def report_error(app: App[Any], error: BaseException) -> None:
    """From a worker thread: show `error` as an error notification (see `notify_error`)."""
    call_ui(app, notify_error, app, error)


def run_in_worker(node: WorkerOwner, call: Callable[[], T], done: Callable[[T], object] | None = None, *,
                  failed: Callable[[], object] | None = None, group: str = "read") -> None:
    """Run `call()` in a thread worker owned by `node`; then `done(result)` on the UI thread. A failure
    becomes an error notification, then `failed()` runs on the UI thread instead of `done`: a service
    error never crashes the app."""
    app = node.app

    def run() -> None:
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 - a worker must report, never crash the app
            report_error(app, error)
            if failed is not None:
                call_ui(app, failed)
            return
        if done is not None:
            call_ui(app, done, result)

    node.run_worker(run, thread=True, group=group, exit_on_error=False)
