"""The edit ledger: every edit, its checks and fingerprints, in one database that is the source of truth.

Callers get frozen dataclasses (`StoredEdit`, `CheckRecord`), never ORM objects: each call runs in its
own short transaction, so one `Ledger` can be shared by threads and by processes using the same file.
Every change of state (an edit with what it supersedes or retires, a revert with what it revives) is
one transaction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields
from types import TracebackType

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from kbchat.config import default_db_url
from kbchat.errors import LedgerError
from kbchat.faults import crash_point
from kbchat.ledger.chats import ChatLog, Statuses
from kbchat.ledger.database import Transactions, make_engine, upgrade
from kbchat.ledger.models import Check, Edit, Meta
from kbchat.ledger.rows import (
    NewEdit,
    StoredEdit,
    check_kind,
    check_record,
    check_status,
    get_row,
    hparams_json,
    now,
    require,
    row_digest,
    sha256,
    stored,
)
from kbchat.records import CheckRecord

__all__ = ["Ledger", "NewEdit", "Reverted", "StoredEdit"]


@dataclass(frozen=True)
class Reverted:
    """What one revert wrote: the reverted edit and the edits it brought back."""

    edit: StoredEdit
    revived: tuple[StoredEdit, ...] = ()


class Ledger:
    """The edit ledger. Open with `Ledger.open()`; close with `close()` or a `with` block."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose schema is already at head; prefer `Ledger.open`."""
        self._engine = engine
        self._tx = Transactions(engine)
        self.url = self._tx.url

    @classmethod
    def open(cls, url: str | None = None, home: str | os.PathLike[str] | None = None) -> Ledger:
        """Open (creating and migrating as needed) the ledger at `url`, default `default_db_url(home)`.

        Raises LedgerError with a one-line message naming the URL when it cannot be opened.
        """
        engine = make_engine(url or default_db_url(home))
        try:
            upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        """Release every connection; the ledger cannot be used afterwards."""
        self._tx.closed = True
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    def chat_log(self, statuses: Statuses | None = None) -> ChatLog:
        """The saved conversations in this database. `statuses` (edit ids -> status) is for a service
        whose edits are kept elsewhere; by default they are read from this ledger."""
        return ChatLog(self._tx, statuses)

    def _session(self, *, write: bool = False) -> AbstractContextManager[Session]:
        return self._tx.session(write=write)

    # --- edits ---

    def record_edit(
        self, new: NewEdit, *, supersede: Sequence[int] = (), retire: Sequence[int] = (),
        meta: Mapping[str, str] | None = None,
    ) -> StoredEdit:
        """Insert `new`; mark `supersede` ids superseded by it and `retire` ids committed into it; store
        `meta` (e.g. the fingerprint the weights now have).

        All in one transaction: if any id is unknown (EditNotFound) or anything else fails, nothing
        is written.
        """
        check_status(new.status)
        check_kind(new.kind)
        both = set(supersede) & set(retire)
        if both:
            raise LedgerError(f"edit #{min(both)} is in both supersede and retire: pass it in one of them")
        values = {f.name: getattr(new, f.name) for f in fields(new)}
        values["hparams"] = hparams_json(new.hparams)
        values["delta_sha256"] = sha256(new.delta) if new.delta is not None else None
        with self._session(write=True) as session:
            row = Edit(created_at=now(), row_sha256="", **values)
            session.add(row)
            session.flush()  # assigns row.id, which the fingerprint covers
            for old_id in supersede:
                old = get_row(session, old_id)
                old.status, old.superseded_by = "superseded", row.id
                old.row_sha256 = row_digest(old)
            for old_id in retire:
                old = get_row(session, old_id)
                old.status, old.committed_into = "committed", row.id
                old.row_sha256 = row_digest(old)
            row.row_sha256 = row_digest(row)
            crash_point("ledger.record")
            _merge_meta(session, meta)
            result = stored(row)
        return result

    def set_status(
        self, edit_id: int, status: str, *, notes: str | None = None, weights_after: str | None = None
    ) -> StoredEdit:
        """Change an edit's status; `notes` and `weights_after` replace the stored values when given.

        `reverted_at` is stamped when the status becomes 'reverted' and cleared when it becomes
        'active' again. Raises LedgerError for an unknown status, EditNotFound for an unknown id.
        """
        check_status(status)
        with self._session(write=True) as session:
            row = get_row(session, edit_id)
            if status == "reverted" and row.status != "reverted":
                row.reverted_at = now()
            elif status == "active":
                row.reverted_at = None
            row.status = status
            if notes is not None:
                row.notes = notes
            if weights_after is not None:
                row.weights_after = weights_after
            row.row_sha256 = row_digest(row)
            result = stored(row)
        return result

    def revert(self, edit_id: int, *, notes: str | None = None, revive: Sequence[int] = (),
               renote: Mapping[int, str] | None = None, meta: Mapping[str, str] | None = None) -> Reverted:
        """Revert active edit `edit_id` in ONE transaction: its status (with `notes`), the `revive`d edits
        it superseded made active again, `renote`d edits' notes replaced, `meta` stored. A crash at any
        point leaves either all of it or none of it.

        Raises EditNotFound, or LedgerError when the edit is not active or a revived edit was not
        superseded by it (someone else changed the ledger in between: nothing is written).
        """
        with self._session(write=True) as session:
            row = get_row(session, edit_id)
            if row.status != "active":
                raise LedgerError(f"edit #{edit_id} is {row.status}; only active edits can be reverted")
            row.status, row.reverted_at = "reverted", now()
            if notes is not None:
                row.notes = notes
            row.row_sha256 = row_digest(row)
            crash_point("ledger.revert")
            revived = []
            for old_id in revive:
                old = get_row(session, old_id)
                if old.status != "superseded" or old.superseded_by != edit_id:
                    raise LedgerError(f"edit #{old_id} is not superseded by #{edit_id}; nothing was reverted")
                old.status, old.superseded_by = "active", None
                old.notes = f"active again: #{edit_id} was reverted"
                old.row_sha256 = row_digest(old)
                revived.append(old)
            for other_id, note in (renote or {}).items():
                other = get_row(session, other_id)
                other.notes = note
                other.row_sha256 = row_digest(other)
            _merge_meta(session, meta)
            result = Reverted(stored(row), tuple(stored(r) for r in revived))
        return result

    def get(self, edit_id: int) -> StoredEdit:
        """The edit with this id; EditNotFound if there is none."""
        with self._session() as session:
            return stored(get_row(session, edit_id))

    def edits(
        self, *, status: str | None = None, kind: str | None = None, method: str | None = None
    ) -> list[StoredEdit]:
        """Edits matching every given filter, oldest first. Unknown status or kind: LedgerError."""
        query = select(Edit).order_by(Edit.id)
        if status is not None:
            check_status(status)
            query = query.where(Edit.status == status)
        if kind is not None:
            check_kind(kind)
            query = query.where(Edit.kind == kind)
        if method is not None:
            query = query.where(Edit.method == method)
        with self._session() as session:
            return [stored(row) for row in session.scalars(query)]

    def signature(self, kind: str) -> tuple[int, int, int]:
        """(count, sum of ids, largest id) of the active edits of `kind`: changes whenever that set does
        (ids are never reused), so a process can tell cheaply that another one wrote."""
        with self._session() as session:
            row = session.execute(
                select(func.count(Edit.id), func.coalesce(func.sum(Edit.id), 0), func.coalesce(func.max(Edit.id), 0))
                .where(Edit.status == "active", Edit.kind == kind)
            ).one()
            return int(row[0]), int(row[1]), int(row[2])

    def active(self, kind: str | None = None) -> list[StoredEdit]:
        """Active edits (optionally of one kind), in the order they were made."""
        return self.edits(status="active", kind=kind)

    # --- checks ---

    def add_checks(self, edit_id: int, checks: Sequence[CheckRecord]) -> None:
        """Append checks to an edit; EditNotFound for an unknown id."""
        with self._session(write=True) as session:
            require(session, edit_id)
            stamp = now()
            session.add_all(Check(edit_id=edit_id, created_at=stamp, **asdict(c)) for c in checks)

    def replace_checks(self, edit_id: int, checks: Sequence[CheckRecord], metric: str | None = None) -> None:
        """Replace an edit's checks (only those of `metric` when given) with `checks`, atomically."""
        with self._session(write=True) as session:
            require(session, edit_id)
            old = delete(Check).where(Check.edit_id == edit_id)
            if metric is not None:
                old = old.where(Check.metric == metric)
            session.execute(old)
            stamp = now()
            session.add_all(Check(edit_id=edit_id, created_at=stamp, **asdict(c)) for c in checks)

    def checks(self, edit_id: int) -> tuple[CheckRecord, ...]:
        """An edit's checks in the order they were added; EditNotFound for an unknown id."""
        with self._session() as session:
            require(session, edit_id)
            rows = session.scalars(select(Check).where(Check.edit_id == edit_id).order_by(Check.id))
            return tuple(check_record(row) for row in rows)

    # --- meta ---

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """The stored value for `key`, else `default`."""
        with self._session() as session:
            row = session.get(Meta, key)
            return row.value if row is not None else default

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any previous value."""
        with self._session(write=True) as session:
            _merge_meta(session, {key: value})

    # --- integrity ---

    def verify(self) -> list[str]:
        """Re-hash every edit's delta and content; one line per mismatch, empty when all is well."""
        problems: list[str] = []
        query = select(Edit).order_by(Edit.id).execution_options(yield_per=64)
        with self._session() as session:
            for row in session.scalars(query):
                actual = sha256(row.delta) if row.delta is not None else None
                if actual != row.delta_sha256:
                    problems.append(
                        f"edit #{row.id}: delta sha256 is {actual or 'missing'}, "
                        f"the ledger recorded {row.delta_sha256 or 'no delta'}"
                    )
                if row_digest(row) != row.row_sha256:
                    problems.append(
                        f"edit #{row.id}: row content does not match its fingerprint (changed outside kbchat?)"
                    )
                session.expunge(row)  # deltas can be large: do not keep every row in the session
        return problems


def _merge_meta(session: Session, meta: Mapping[str, str] | None) -> None:
    for key, value in (meta or {}).items():
        session.merge(Meta(key=key, value=value))
