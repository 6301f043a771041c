"""`MemoryBook`: the ledger together with the scope index of its active memory edits.

One home for what both the local engine and the OpenAI-backend host do with memory edits: record
(superseding the edit of the same subject and relation), revert (reviving what it superseded, in one
ledger transaction), retire (after a commit), find the edits in scope for a question, and list edits.
The book never touches a model: the caller switches in-model patches on and off from what each call
returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kbchat.errors import EditFailed, KbchatError, LedgerError
from kbchat.ledger import Ledger, NewEdit, Reverted, StoredEdit
from kbchat.memory.active import ActiveMemory
from kbchat.memory.embedder import Embedder
from kbchat.memory.index import key_text_for
from kbchat.records import EditRecord


@dataclass(frozen=True)
class Changes:
    """What another process changed in the active memory edits since the book last looked."""

    added: tuple[StoredEdit, ...] = ()
    removed: tuple[int, ...] = ()


@dataclass(frozen=True)
class Recorded:
    """A memory edit as written, with the ids of the edits it superseded."""

    edit: StoredEdit
    superseded: tuple[int, ...] = ()


class MemoryBook:
    """The ledger's active memory edits, indexed for retrieval. Thread-safe for reads; callers serialise
    writes (the engine's edit lock)."""

    def __init__(self, ledger: Ledger, embedder: Embedder) -> None:
        self.ledger = ledger
        self.embedder = embedder
        self._memory = ActiveMemory(embedder)
        self._seen: tuple[int, int, int] | None = None  # the ledger's memory signature when last in step

    def load(self) -> list[StoredEdit]:
        """Index every active memory edit of the ledger (on open); returns them."""
        self._seen = self.ledger.signature("memory")
        rows = self.ledger.active(kind="memory")
        self._memory.load(rows)
        return rows

    def sync(self) -> Changes:
        """Catch up with edits other processes recorded, reverted or retired in the same ledger: one
        cheap query when nothing changed. The caller serialises it with its own writes."""
        seen = self.ledger.signature("memory")
        if seen == self._seen:
            return Changes()
        rows = {r.id: r for r in self.ledger.active(kind="memory")}
        removed = tuple(r.id for r in self._memory.rows() if r.id not in rows)
        added = tuple(r for i, r in rows.items() if i not in self._memory)
        for edit_id in removed:
            self._memory.forget(edit_id)
        self._memory.load(added)
        self._seen = seen
        return Changes(added, removed)

    def __len__(self) -> int:
        return len(self._memory)

    def rows(self) -> list[StoredEdit]:
        return self._memory.rows()

    def retrieve(self, question: str, exclude: Iterable[int] = ()) -> list[StoredEdit]:
        """Active memory edits in scope for `question`, best first (minus `exclude`)."""
        return self._memory.retrieve(question, exclude)

    def key_vector(self, subject: str, prompt: str, target: str) -> np.ndarray:
        """The embedding an edit is indexed under (stored with its row)."""
        return self.embedder.embed([key_text_for(subject, prompt, target)])[0]

    def record(self, new: NewEdit, vector: np.ndarray) -> Recorded:
        """Write `new` (superseding the active edit of the same subject and relation) and put it in scope.

        One ledger transaction; on failure nothing is written or indexed (EditFailed).
        """
        supersede = self._memory.superseded_by(new)
        try:
            stored = self.ledger.record_edit(new, supersede=supersede)
        except LedgerError as exc:
            raise EditFailed(f"the edit was not recorded, nothing changed: {exc}") from exc
        for old in supersede:
            self._memory.forget(old)
        self._memory.add(stored, vector)
        return Recorded(stored, tuple(supersede))

    def revert(self, edit_id: int) -> Reverted:
        """Revert active memory edit `edit_id` and bring back the edits it superseded: one transaction."""
        row = self.ledger.get(edit_id)
        if row.status != "active":
            raise KbchatError(f"edit #{edit_id} is {row.status}; only active edits can be reverted")
        if row.kind != "memory":
            raise KbchatError(f"edit #{edit_id} is a weight edit, not a memory edit")
        revive = [r.id for r in self.ledger.edits(status="superseded", kind="memory") if r.superseded_by == edit_id]
        result = self.ledger.revert(edit_id, revive=revive)
        self._memory.forget(edit_id)
        self._memory.load(result.revived)
        return result

    def retire(self, edit_ids: Sequence[int]) -> None:
        """Take edits out of scope (they were committed into the weights)."""
        for edit_id in edit_ids:
            self._memory.forget(edit_id)

    def edits(self, *, status: str | None = None) -> list[EditRecord]:
        return [r.record(self.ledger.checks(r.id)) for r in self.ledger.edits(status=status)]

    def get(self, edit_id: int) -> EditRecord:
        return self.ledger.get(edit_id).record(self.ledger.checks(edit_id))
