"""What only PostgreSQL has: the writers' advisory lock, its timeout, and a session time zone that is not
UTC. Everything else runs on both backends in test_ledger.py and test_migrations.py."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from sqlalchemy import text

from kbchat.errors import LedgerError
from kbchat.ledger import Ledger, NewEdit
from kbchat.ledger.database import PG_WRITE_LOCK, writer
from tests.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)


def new_edit(tag: str = "A") -> NewEdit:
    return NewEdit(raw_text=tag, subject=tag, prompt=f"{tag} is", relation="{} is", target="B",
                   method="rome", kind="weight", delta=b"\x00\xff" * 8)


@pytest.fixture
def url(postgres_server: PostgresServer) -> str:  # noqa: F811
    return postgres_server.create_database()


def advisory_locks(ledger: Ledger) -> int:
    with ledger._engine.connect() as connection:
        return connection.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        ).scalar()


def test_writer_transactions_hold_the_advisory_lock(url: str) -> None:
    with Ledger.open(url) as ledger:
        assert advisory_locks(ledger) == 0
        with writer(ledger._engine).begin() as connection:
            held = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            ).scalar()
            assert held == 1
        assert advisory_locks(ledger) == 0  # released at commit
        with ledger._engine.begin() as connection:  # readers take none
            assert connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            ).scalar() == 0


def test_a_writer_waits_then_fails_with_a_retry_hint(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBCHAT_LOCK_TIMEOUT", "0.3")  # read when the engine is made
    with Ledger.open(url) as holder, Ledger.open(url) as other:
        with writer(holder._engine).begin():
            with pytest.raises(LedgerError, match="lock timeout.*retry") as raised:
                other.record_edit(new_edit())
            assert "\n" not in str(raised.value)
        assert other.record_edit(new_edit()).id == 1  # free again once the holder committed
        with holder._engine.connect() as connection:
            assert connection.execute(text("SHOW lock_timeout")).scalar() == "300ms"
            assert connection.execute(text(f"SELECT pg_try_advisory_xact_lock({PG_WRITE_LOCK})")).scalar()


def test_timestamps_are_utc_whatever_the_session_time_zone(url: str) -> None:
    kolkata = f"{url}?options={quote('-c timezone=Asia/Kolkata')}"
    with Ledger.open(kolkata) as ledger:
        with ledger._engine.connect() as connection:
            assert connection.execute(text("SHOW timezone")).scalar() == "Asia/Kolkata"
        edit = ledger.record_edit(new_edit())
        assert edit.created_at.utcoffset().total_seconds() == 0
        assert ledger.get(edit.id) == edit
        assert ledger.verify() == []  # the fingerprint covers the UTC time, not the session's
    with Ledger.open(url) as ledger:
        assert ledger.get(edit.id) == edit
        assert ledger.verify() == []
