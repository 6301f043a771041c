"""Reading a ledger row's delta: checked against its fingerprint, a problem reported instead of raised."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kbchat.ledger import StoredEdit
from methods import Delta, Update


@dataclass(frozen=True)
class RowDelta:
    delta: Delta | None
    problem: str | None = None  # why `delta` is None


def row_delta(row: StoredEdit) -> RowDelta:
    """The row's delta, or None with the problem (missing, altered or unreadable) to report."""
    if row.delta is None or hashlib.sha256(row.delta).hexdigest() != row.delta_sha256:
        return RowDelta(None, f"edit #{row.id}: stored delta is missing or corrupt; it was not applied "
                              f"(revert it with `kbchat revert {row.id}`)")
    try:
        return RowDelta(Delta.from_bytes(row.delta))
    except ValueError as exc:
        return RowDelta(None, f"edit #{row.id}: {exc}; it was not applied")


def negated(delta: Delta) -> Delta:
    """The delta that cancels `delta` (to first order in float rounding)."""
    return Delta(delta.method, tuple(Update(u.module, -u.left, u.right) for u in delta.updates), delta.meta)
