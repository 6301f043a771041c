"""The ledger's database: engines for any SQLAlchemy URL (SQLite and PostgreSQL tuned for several
processes) and the schema migrations that run on open."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from kbchat.config import ENV_LOCK_TIMEOUT, lock_timeout_ms
from kbchat.errors import LedgerError

# The migrations live in the source tree next to the package, not inside it.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# The newest migration. A ledger already there opens without importing alembic (~0.5 s of every start);
# tests/test_migrations.py checks this against alembic's own idea of the head.
HEAD_REVISION = "0002"
# Execution option read by the "begin" hooks: this transaction writes, so it takes the write lock first.
_WRITER = "kbchat_writer"
# Key of the transaction-level advisory lock kbchat's writers take on PostgreSQL (any fixed bigint).
PG_WRITE_LOCK = 0x6B62636861  # "kbcha"


def mask_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ***."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    """An Engine for `url`. SQLite gets WAL, a busy timeout, foreign keys and explicit BEGINs;
    PostgreSQL a lock timeout and an advisory lock that writers take (see `writer`). The timeout is
    `config.lock_timeout_ms()` (30 s unless $KBCHAT_LOCK_TIMEOUT says otherwise).

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
            f"cannot open ledger at {shown}: {one_line(exc)} (unknown dialect or driver not installed)"
        ) from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, lock_timeout_ms())
    elif engine.dialect.name == "postgresql":
        _configure_postgresql(engine, lock_timeout_ms())
    return engine


def _configure_sqlite(engine: Engine, timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from sqlite3 (it never BEGINs before DDL, so migrations would
        # not be atomic); `_on_begin` emits BEGIN instead. This is SQLAlchemy's documented recipe.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching a new file to WAL needs a lock another process may hold.
            cursor.execute(f"PRAGMA busy_timeout={timeout_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that reads, then writes, fails at
        # once with SQLITE_BUSY when another process wrote in between; BEGIN IMMEDIATE waits instead.
        mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITER) else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _configure_postgresql(engine: Engine, timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Like SQLite's busy timeout: wait at most this long for a lock, then fail with a clear reason.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET lock_timeout = {timeout_ms}")
        finally:
            cursor.close()
        dbapi_connection.commit()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # The same one-writer-at-a-time rule as BEGIN IMMEDIATE on SQLite: a writer reads rows, then
        # changes them (revert checks the status first; a migration checks the schema version first),
        # which under READ COMMITTED would let two writers act on the same stale read. Concurrent
        # creators of the schema wait here too instead of both running CREATE TABLE.
        if conn.get_execution_options().get(_WRITER):
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def writer(engine: Engine) -> Engine:
    """The same engine (and pool) whose transactions take the write lock first: BEGIN IMMEDIATE on
    SQLite, a transaction-level advisory lock on PostgreSQL (released at commit or rollback)."""
    return engine.execution_options(**{_WRITER: True})


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
    with writer(engine).connect() as conn:
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


class Transactions:
    """Short transactions on one engine, shared by the ledger's stores (edits, conversations)."""

    def __init__(self, engine: Engine) -> None:
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(writer(engine), expire_on_commit=False)
        self.url = mask_url(engine.url)
        self.closed = False

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends cleanly, rolled back on any exception.
        Database failures come out as LedgerError naming the URL."""
        if self.closed:
            raise LedgerError(f"ledger {self.url} is closed: open it again with Ledger.open()")
        factory = self._writes if write else self._reads
        try:
            with factory.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger {self.url}: {db_reason(exc)}") from exc


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
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

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
            f"cannot upgrade ledger at {shown}: {one_line(exc)} (was it written by a newer kbchat?)"
        ) from exc
    except SQLAlchemyError as exc:
        raise LedgerError(f"cannot open ledger at {shown}: {db_reason(exc)}") from exc


def current_revision(engine: Engine) -> str | None:
    """The ledger's schema revision, or None when it has none yet (or it cannot be read here)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


# --- fingerprints --------------------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def db_reason(exc: SQLAlchemyError) -> str:
    reason = one_line(getattr(exc, "orig", None) or exc)
    if "locked" in reason or "busy" in reason or "lock timeout" in reason:
        reason += (f" (another process held the ledger for over {lock_timeout_ms() / 1000:g} s; retry, or "
                   f"wait longer with {ENV_LOCK_TIMEOUT})")
    return reason
