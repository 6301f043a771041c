"""Ledger rows as callers see them (frozen dataclasses, never ORM objects) and the fingerprints that
let `verify` find a row or a delta changed outside kbchat."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kbchat.config import KINDS, STATUSES
from kbchat.errors import EditNotFound, LedgerError
from kbchat.ledger.database import one_line
from kbchat.ledger.models import Check, Edit
from kbchat.records import CheckRecord, EditRecord


@dataclass(frozen=True)
class NewEdit:
    """Every writable column of an edit; the store adds id, created_at and the fingerprints."""

    raw_text: str
    subject: str
    prompt: str
    relation: str  # prompt with `{}` in place of the subject
    target: str
    method: str
    kind: str  # memory | weight
    status: str = "active"
    target_true: str | None = None
    error: str | None = None
    notes: str | None = None
    hparams: dict[str, Any] | None = None  # stored as JSON
    delta: bytes | None = None
    weights_before: str | None = None
    weights_after: str | None = None
    model_fingerprint: str | None = None
    embedding: bytes | None = None
    embedder: str | None = None


@dataclass(frozen=True)
class StoredEdit:
    """One ledger row, detached from the database. Timestamps are aware UTC."""

    id: int
    created_at: datetime
    raw_text: str
    subject: str
    prompt: str
    relation: str
    target: str
    method: str
    kind: str
    status: str
    row_sha256: str
    target_true: str | None = None
    superseded_by: int | None = None
    committed_into: int | None = None
    error: str | None = None
    notes: str | None = None
    hparams: dict[str, Any] | None = None
    delta: bytes | None = None
    delta_sha256: str | None = None
    weights_before: str | None = None
    weights_after: str | None = None
    model_fingerprint: str | None = None
    embedding: bytes | None = None
    embedder: str | None = None
    reverted_at: datetime | None = None

    def record(self, checks: Sequence[CheckRecord] = ()) -> EditRecord:
        """The front-end view of this edit (no delta, embedding or fingerprints)."""
        return EditRecord(
            id=self.id,
            created_at=self.created_at,
            raw_text=self.raw_text,
            subject=self.subject,
            prompt=self.prompt,
            target=self.target,
            method=self.method,
            kind=self.kind,
            status=self.status,
            target_true=self.target_true,
            error=self.error,
            superseded_by=self.superseded_by,
            reverted_at=self.reverted_at,
            notes=self.notes,
            checks=tuple(checks),
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def row_digest(row: Edit) -> str:
    """sha256 of every column but row_sha256 and delta; other binary columns enter as their sha256.

    The delta is covered through delta_sha256 (checked against the bytes on its own), so a damaged
    delta is reported once, as a delta. NULL columns are left out, so adding a nullable column in a
    later migration keeps old fingerprints valid.
    """
    content: dict[str, Any] = {}
    for column in Edit.__table__.columns:
        value = getattr(row, column.key)
        if column.key in ("row_sha256", "delta") or value is None:
            continue
        if isinstance(value, bytes):
            value = sha256(value)
        elif isinstance(value, datetime):
            value = utc_iso(value)
        content[column.key] = value
    return sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


# --- helpers -------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(timezone.utc)


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise LedgerError(f"unknown edit status {status!r}: use one of {', '.join(STATUSES)}")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise LedgerError(f"unknown edit kind {kind!r}: use one of {', '.join(KINDS)}")


def not_found(edit_id: int) -> EditNotFound:
    return EditNotFound(f"no edit #{edit_id}: list edits with `kbchat edits`")


def get_row(session: Session, edit_id: int) -> Edit:
    row = session.get(Edit, edit_id)
    if row is None:
        raise not_found(edit_id)
    return row


def require(session: Session, edit_id: int) -> None:
    # An existence check that does not load the (possibly large) delta.
    if session.scalar(select(Edit.id).where(Edit.id == edit_id)) is None:
        raise not_found(edit_id)


def stored(row: Edit) -> StoredEdit:
    values = {column.key: getattr(row, column.key) for column in Edit.__table__.columns}
    if values["hparams"] is not None:
        try:
            values["hparams"] = json.loads(values["hparams"])
        except ValueError as exc:
            raise LedgerError(
                f"edit #{row.id}: stored hparams are not valid JSON; run `kbchat verify`"
            ) from exc
    return StoredEdit(**values)


def check_record(row: Check) -> CheckRecord:
    return CheckRecord(
        metric=row.metric,
        mode=row.mode,
        probe=row.probe,
        expected=row.expected,
        before=row.before,
        after=row.after,
        passed=row.passed,
        score=row.score,
    )


def hparams_json(hparams: dict[str, Any] | None) -> str | None:
    if hparams is None:
        return None
    try:
        return json.dumps(hparams, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"hparams must be JSON-serialisable: {one_line(exc)}") from exc
