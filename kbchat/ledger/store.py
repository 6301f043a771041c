"""The edit ledger: every edit, its checks and fingerprints, in one database that is the source of truth.

Callers get frozen dataclasses (`StoredEdit`, `CheckRecord`), never ORM objects: each call runs in its
own short transaction, so one `Ledger` can be shared by threads and by processes using the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, delete, event, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from kbchat.config import default_db_url
from kbchat.errors import EditNotFound, LedgerError
from kbchat.ledger.models import KINDS, STATUSES, Check, Edit, Meta
from kbchat.records import CheckRecord, EditRecord

# The migrations live in the source tree next to the package, not inside it.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
BUSY_TIMEOUT_MS = 30_000
# Execution option read by the SQLite "begin" hook: which BEGIN a transaction starts with.
_SQLITE_BEGIN = "kbchat_sqlite_begin"


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


# --- engine and schema ---------------------------------------------------------------------------


def mask_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ***."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    """An Engine for `url`. SQLite gets WAL, a 30 s busy timeout, foreign keys and explicit BEGINs.

    The parent directory of an SQLite file is created. Raises LedgerError naming the URL when it cannot
    be parsed, its dialect or driver is missing, or the directory cannot be created. No connection is
    made here; the first one is made by `upgrade`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LedgerError(
            f"cannot open ledger at {url!r}: not a database URL (expected e.g. sqlite:////path/to/ledger.db)"
        ) from exc
    shown = mask_url(parsed)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            # One shared connection: each new connection to :memory: would see its own empty database.
            options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif not database.startswith("file:"):
            parent = Path(database).expanduser().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(
                    f"cannot open ledger at {shown}: cannot create directory {parent} ({exc.strerror})"
                ) from exc
    try:
        engine = create_engine(parsed, **options)
    except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
        raise LedgerError(
            f"cannot open ledger at {shown}: {_one_line(exc)} (unknown dialect or driver not installed)"
        ) from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from sqlite3 (it never BEGINs before DDL, so migrations would
        # not be atomic); `_on_begin` emits BEGIN instead. This is SQLAlchemy's documented recipe.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching a new file to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that reads, then writes, fails at
        # once with SQLITE_BUSY when another process wrote in between; BEGIN IMMEDIATE waits instead.
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _writer(engine: Engine) -> Engine:
    """The same engine (and pool) whose transactions start with BEGIN IMMEDIATE on SQLite."""
    return engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})


def _pragma_outside_transaction(conn: Connection, sql: str) -> None:
    # Connection.exec_driver_sql would autobegin, and SQLite ignores foreign_keys inside a transaction.
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside one write transaction, for schema changes; committed on a clean exit.

    On SQLite, foreign keys are off while it is open (so a batch-mode table rebuild does not cascade
    deletes into `checks`), and `PRAGMA foreign_key_check` must come back empty before the commit.
    """
    with _writer(engine).connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            _pragma_outside_transaction(conn, "PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    dangling = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if dangling:
                        table, rowid = dangling[0][0], dangling[0][1]
                        raise LedgerError(
                            f"migration left {len(dangling)} dangling foreign key(s), first in "
                            f"{table} rowid {rowid}; nothing was changed"
                        )
        finally:
            if sqlite:
                _pragma_outside_transaction(conn, "PRAGMA foreign_keys=ON")


def upgrade(engine: Engine) -> None:
    """Migrate the schema to the newest revision (a no-op when it is there already).

    Runs in one write transaction, so concurrent openers of a new file wait for each other instead of
    both creating the tables. Raises LedgerError naming the URL on any failure.
    """
    shown = mask_url(engine.url)
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise LedgerError(
            f"cannot open ledger at {shown}: migrations not found at {MIGRATIONS_DIR} "
            "(install kbchat from its source checkout: pip install -e .)"
        )
    config = Config()
    # configparser interpolates '%', which may occur in a path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    try:
        with migration_connection(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    except CommandError as exc:
        raise LedgerError(
            f"cannot upgrade ledger at {shown}: {_one_line(exc)} (was it written by a newer kbchat?)"
        ) from exc
    except SQLAlchemyError as exc:
        raise LedgerError(f"cannot open ledger at {shown}: {_db_reason(exc)}") from exc


# --- fingerprints --------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utc_iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _row_digest(row: Edit) -> str:
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
            value = _sha256(value)
        elif isinstance(value, datetime):
            value = _utc_iso(value)
        content[column.key] = value
    return _sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


# --- helpers -------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _db_reason(exc: SQLAlchemyError) -> str:
    reason = _one_line(getattr(exc, "orig", None) or exc)
    if "locked" in reason or "busy" in reason:
        reason += f" (another kbchat process held it for over {BUSY_TIMEOUT_MS // 1000} s; retry)"
    return reason


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise LedgerError(f"unknown edit status {status!r}: use one of {', '.join(STATUSES)}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise LedgerError(f"unknown edit kind {kind!r}: use one of {', '.join(KINDS)}")


def _not_found(edit_id: int) -> EditNotFound:
    return EditNotFound(f"no edit #{edit_id}: list edits with `kbchat edits`")


def _row(session: Session, edit_id: int) -> Edit:
    row = session.get(Edit, edit_id)
    if row is None:
        raise _not_found(edit_id)
    return row


def _require(session: Session, edit_id: int) -> None:
    # An existence check that does not load the (possibly large) delta.
    if session.scalar(select(Edit.id).where(Edit.id == edit_id)) is None:
        raise _not_found(edit_id)


def _stored(row: Edit) -> StoredEdit:
    values = {column.key: getattr(row, column.key) for column in Edit.__table__.columns}
    if values["hparams"] is not None:
        try:
            values["hparams"] = json.loads(values["hparams"])
        except ValueError as exc:
            raise LedgerError(
                f"edit #{row.id}: stored hparams are not valid JSON; run `kbchat verify`"
            ) from exc
    return StoredEdit(**values)


def _check_record(row: Check) -> CheckRecord:
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


def _hparams_json(hparams: dict[str, Any] | None) -> str | None:
    if hparams is None:
        return None
    try:
        return json.dumps(hparams, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"hparams must be JSON-serialisable: {_one_line(exc)}") from exc


# --- the store -----------------------------------------------------------------------------------


class Ledger:
    """The edit ledger. Open with `Ledger.open()`; close with `close()` or a `with` block."""

    def __init__(self, engine: Engine) -> None:
        """Wrap an engine whose schema is already at head; prefer `Ledger.open`."""
        self._engine = engine
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(_writer(engine), expire_on_commit=False)
        self._closed = False
        self.url = mask_url(engine.url)

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
        self._closed = True
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends cleanly, rolled back on any exception."""
        if self._closed:
            raise LedgerError(f"ledger {self.url} is closed: open it again with Ledger.open()")
        factory = self._writes if write else self._reads
        try:
            with factory.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger {self.url}: {_db_reason(exc)}") from exc

    # --- edits ---

    def record_edit(
        self, new: NewEdit, *, supersede: Sequence[int] = (), retire: Sequence[int] = ()
    ) -> StoredEdit:
        """Insert `new`; mark `supersede` ids superseded by it and `retire` ids committed into it.

        All in one transaction: if any id is unknown (EditNotFound) or anything else fails, nothing
        is written.
        """
        _check_status(new.status)
        _check_kind(new.kind)
        both = set(supersede) & set(retire)
        if both:
            raise LedgerError(f"edit #{min(both)} is in both supersede and retire: pass it in one of them")
        values = {f.name: getattr(new, f.name) for f in fields(new)}
        values["hparams"] = _hparams_json(new.hparams)
        values["delta_sha256"] = _sha256(new.delta) if new.delta is not None else None
        with self._session(write=True) as session:
            row = Edit(created_at=_now(), row_sha256="", **values)
            session.add(row)
            session.flush()  # assigns row.id, which the fingerprint covers
            for old_id in supersede:
                old = _row(session, old_id)
                old.status, old.superseded_by = "superseded", row.id
                old.row_sha256 = _row_digest(old)
            for old_id in retire:
                old = _row(session, old_id)
                old.status, old.committed_into = "committed", row.id
                old.row_sha256 = _row_digest(old)
            row.row_sha256 = _row_digest(row)
            stored = _stored(row)
        return stored

    def set_status(
        self, edit_id: int, status: str, *, notes: str | None = None, weights_after: str | None = None
    ) -> StoredEdit:
        """Change an edit's status; `notes` and `weights_after` replace the stored values when given.

        `reverted_at` is stamped when the status becomes 'reverted' and cleared when it becomes
        'active' again. Raises LedgerError for an unknown status, EditNotFound for an unknown id.
        """
        _check_status(status)
        with self._session(write=True) as session:
            row = _row(session, edit_id)
            if status == "reverted" and row.status != "reverted":
                row.reverted_at = _now()
            elif status == "active":
                row.reverted_at = None
            row.status = status
            if notes is not None:
                row.notes = notes
            if weights_after is not None:
                row.weights_after = weights_after
            row.row_sha256 = _row_digest(row)
            stored = _stored(row)
        return stored

    def get(self, edit_id: int) -> StoredEdit:
        """The edit with this id; EditNotFound if there is none."""
        with self._session() as session:
            return _stored(_row(session, edit_id))

    def edits(
        self, *, status: str | None = None, kind: str | None = None, method: str | None = None
    ) -> list[StoredEdit]:
        """Edits matching every given filter, oldest first. Unknown status or kind: LedgerError."""
        query = select(Edit).order_by(Edit.id)
        if status is not None:
            _check_status(status)
            query = query.where(Edit.status == status)
        if kind is not None:
            _check_kind(kind)
            query = query.where(Edit.kind == kind)
        if method is not None:
            query = query.where(Edit.method == method)
        with self._session() as session:
            return [_stored(row) for row in session.scalars(query)]

    def active(self, kind: str | None = None) -> list[StoredEdit]:
        """Active edits (optionally of one kind), in the order they were made."""
        return self.edits(status="active", kind=kind)

    # --- checks ---

    def add_checks(self, edit_id: int, checks: Sequence[CheckRecord]) -> None:
        """Append checks to an edit; EditNotFound for an unknown id."""
        with self._session(write=True) as session:
            _require(session, edit_id)
            now = _now()
            session.add_all(Check(edit_id=edit_id, created_at=now, **asdict(c)) for c in checks)

    def replace_checks(self, edit_id: int, checks: Sequence[CheckRecord], metric: str | None = None) -> None:
        """Replace an edit's checks (only those of `metric` when given) with `checks`, atomically."""
        with self._session(write=True) as session:
            _require(session, edit_id)
            old = delete(Check).where(Check.edit_id == edit_id)
            if metric is not None:
                old = old.where(Check.metric == metric)
            session.execute(old)
            now = _now()
            session.add_all(Check(edit_id=edit_id, created_at=now, **asdict(c)) for c in checks)

    def checks(self, edit_id: int) -> tuple[CheckRecord, ...]:
        """An edit's checks in the order they were added; EditNotFound for an unknown id."""
        with self._session() as session:
            _require(session, edit_id)
            rows = session.scalars(select(Check).where(Check.edit_id == edit_id).order_by(Check.id))
            return tuple(_check_record(row) for row in rows)

    # --- meta ---

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """The stored value for `key`, else `default`."""
        with self._session() as session:
            row = session.get(Meta, key)
            return row.value if row is not None else default

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing any previous value."""
        with self._session(write=True) as session:
            session.merge(Meta(key=key, value=value))

    # --- integrity ---

    def verify(self) -> list[str]:
        """Re-hash every edit's delta and content; one line per mismatch, empty when all is well."""
        problems: list[str] = []
        query = select(Edit).order_by(Edit.id).execution_options(yield_per=64)
        with self._session() as session:
            for row in session.scalars(query):
                actual = _sha256(row.delta) if row.delta is not None else None
                if actual != row.delta_sha256:
                    problems.append(
                        f"edit #{row.id}: delta sha256 is {actual or 'missing'}, "
                        f"the ledger recorded {row.delta_sha256 or 'no delta'}"
                    )
                if _row_digest(row) != row.row_sha256:
                    problems.append(
                        f"edit #{row.id}: row content does not match its fingerprint (changed outside kbchat?)"
                    )
                session.expunge(row)  # deltas can be large: do not keep every row in the session
        return problems
