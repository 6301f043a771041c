"""Running an edit's audit now or on a background thread, stopping cleanly when the engine closes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from kbchat.audit import EditView, plan_probes, run_checks
from kbchat.audit.rivals import find_rivals
from kbchat.ledger import Ledger
from kbchat.records import CheckRecord


class AuditStopped(Exception):
    """Raised inside a background audit when the engine closes."""


class AuditRunner:
    """Audits edits: `view(edit_id)` gives the EditView to check, `done(edit_id)` releases what it used."""

    def __init__(self, ledger: Ledger, view: Callable[[int], EditView], done: Callable[[int], None]) -> None:
        self.ledger = ledger
        self._view = view
        self._done = done
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()

    def start(self, edit_id: int, probes: Sequence[str], mode: str) -> None:
        """mode "wait": run now; "background": on a thread (checks are stored as they finish); "off"."""
        if mode == "off":
            return
        if mode == "wait":
            self._run(edit_id, probes)
            return
        thread = threading.Thread(target=self._run, args=(edit_id, probes), name=f"audit-{edit_id}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, edit_id: int, probes: Sequence[str]) -> None:
        def store(check: CheckRecord) -> None:
            if self._closing.is_set():
                raise AuditStopped
            self.ledger.add_checks(edit_id, [check])

        try:
            view = self._view(edit_id)
            # Every probe's text is known before the rivals are (they change only what a probe expects
            # was replaced): ask for all the "before" answers at once, the rivals' two among them, so
            # they are generated together rather than the rivals' one by one.
            view.answers([(p.kind, p.text) for p in plan_probes(view.request, user_probes=probes)], edited=False)
            rivals = find_rivals(view, view.request)
            run_checks(view, plan_probes(view.request, user_probes=probes, rivals=rivals), on_check=store)
        except AuditStopped:
            pass  # closing: the checks stored so far stay
        except Exception as exc:  # a background audit must never take the app down; say why it stopped
            self.ledger.set_status(edit_id, self.ledger.get(edit_id).status, notes=f"audit stopped: {exc}")
        finally:
            self._done(edit_id)

    def wait(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    def close(self) -> None:
        """Background audits stop after their current check; waits for them."""
        self._closing.set()
        self.wait()
