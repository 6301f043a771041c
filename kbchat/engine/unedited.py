"""The model without some weight edits, as runtime patches: how answers naming an edited subject are
worded by the model without that edit (issue #12; `EngineSettings.weight_steer`).

A weight edit is in the weights, so the model without it is the weights plus its negation, switched on
as an in-model patch for one answer's passes only. Negations are made when an answer first needs them
and a bounded number is kept (the least recently used goes first): FT-L's deltas are dense matrices,
and a ledger of 1,000 weight edits must not hold 1,000 more deltas in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from kbchat.engine.deltas import negated, row_delta
from kbchat.ledger import StoredEdit
from kbchat.runtime import ModelRuntime

KEPT = 32  # negations kept between answers


class UneditedPatches:
    """Negation patches of weight edits on `runtime`, under keys ("unedited", edit id)."""

    def __init__(self, runtime: ModelRuntime, kept: int = KEPT) -> None:
        self.runtime = runtime
        self.kept = kept
        self._held: OrderedDict[int, Hashable] = OrderedDict()  # edit id -> patch key, oldest use first
        self._lock = threading.Lock()

    def keys(self, wanted: Sequence[int], active: Sequence[StoredEdit]) -> tuple[Hashable, ...]:
        """The patch keys cancelling the edits `wanted` (ids among the `active` weight edits' rows),
        adding those missing; a stored delta that cannot be read is skipped (restore reports it).
        Negations of edits no longer active are dropped."""
        rows = {r.id: r for r in active}
        with self._lock:
            for gone in [i for i in self._held if i not in rows]:
                self.runtime.remove_patch(self._held.pop(gone))
            found: list[Hashable] = []
            for edit_id in wanted:
                key = self._held.get(edit_id) or self._add(rows[edit_id])
                if key is not None:
                    self._held.move_to_end(edit_id)
                    found.append(key)
            while len(self._held) > max(self.kept, len(found)):
                _, key = self._held.popitem(last=False)
                self.runtime.remove_patch(key)  # an answer already using it keeps it to its end
            return tuple(found)

    def _add(self, row: StoredEdit) -> Hashable | None:
        loaded = row_delta(row)
        if loaded.delta is None:
            return None
        key = ("unedited", row.id)
        self.runtime.add_patch(key, negated(loaded.delta))
        self._held[row.id] = key
        return key
