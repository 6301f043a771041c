"""The edit ledger: round trips, atomic supersede/retire, fingerprints, bad URLs, two writer processes.

Tests taking `url` or `ledger` run on SQLite and on PostgreSQL (a server started by tests/postgres.py).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from datetime import timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kbchat.errors import EditNotFound, LedgerError
from kbchat.ledger import Ledger, NewEdit, StoredEdit
from kbchat.ledger import store as store_module  # row_digest is looked up there
from kbchat.ledger.models import Edit
from kbchat.records import CheckRecord, EditRecord
from tests.postgres import BACKENDS, backend_url, postgres_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def make_edit(**overrides) -> NewEdit:
    values = dict(
        raw_text="/edit The Eiffel Tower is in Rome",
        subject="The Eiffel Tower",
        prompt="The Eiffel Tower is in",
        relation="{} is in",
        target="Rome",
        method="rome",
        kind="weight",
    )
    values.update(overrides)
    return NewEdit(**values)


def check(
    metric: str = "reliability", probe: str = "The Eiffel Tower is in", passed: bool | None = True
) -> CheckRecord:
    return CheckRecord(
        metric=metric,
        mode="teacher_forced",
        probe=probe,
        expected="Rome",
        before="Paris",
        after="Rome",
        passed=passed,
        score=0.9,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger URL: an SQLite file (tmp_path/ledger.db), or a new PostgreSQL database."""
    return backend_url(request, tmp_path)


@pytest.fixture
def ledger(url: str):
    with Ledger.open(url) as opened:
        yield opened


def raw_sql(url: str, sql: str, **params) -> None:
    """Change the database behind kbchat's back, as a user with the sqlite3 shell or psql could."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(sql), params)
    finally:
        engine.dispose()


# --- opening -------------------------------------------------------------------------------------


def test_open_without_url_uses_kbchat_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBCHAT_DB", raising=False)
    monkeypatch.setenv("KBCHAT_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("KBCHAT_HOME", str(tmp_path / "home"))
    with Ledger.open() as ledger:
        ledger.record_edit(make_edit())
        assert ledger.url == f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    assert (tmp_path / "home" / "ledger.db").is_file()


def test_open_with_home_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBCHAT_DB", raising=False)
    monkeypatch.setenv("KBCHAT_CONFIG", str(tmp_path / "no-config.toml"))
    with Ledger.open(home=tmp_path / "elsewhere") as ledger:
        assert ledger.url.endswith("elsewhere/ledger.db")


def test_open_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.db"
    with Ledger.open(f"sqlite:///{path}") as ledger:
        assert ledger.edits() == []
    assert path.is_file()


def test_sqlite_connections_use_wal_and_foreign_keys(db_path: Path) -> None:
    with Ledger.open(f"sqlite:///{db_path}") as ledger, ledger._engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "nosuchdialect://somewhere/db",
        "postgresql://kb:secret@127.0.0.1:1/ledger",  # driver not installed; the password must not leak
        "postgresql+psycopg://kb:secret@127.0.0.1:1/ledger",  # nothing listens there
    ],
)
def test_bad_url_is_a_one_line_ledger_error(url: str) -> None:
    with pytest.raises(LedgerError) as raised:
        Ledger.open(url)
    message = str(raised.value)
    assert "\n" not in message
    assert "secret" not in message
    assert url.split("://")[0] in message


def test_directory_as_database_is_a_ledger_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=str(tmp_path)):
        Ledger.open(f"sqlite:///{tmp_path}")


def test_file_in_place_of_parent_directory_is_a_ledger_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a directory")
    with pytest.raises(LedgerError, match="cannot create directory"):
        Ledger.open(f"sqlite:///{tmp_path / 'plain-file' / 'ledger.db'}")


def test_file_that_is_not_a_database_is_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(LedgerError, match="garbage.db"):
        Ledger.open(f"sqlite:///{path}")


def test_closed_ledger_refuses_calls(url: str) -> None:
    with Ledger.open(url) as ledger:
        pass
    with pytest.raises(LedgerError, match="closed"):
        ledger.edits()


# --- edits ---------------------------------------------------------------------------------------


def test_dataclasses_cover_every_column() -> None:
    columns = set(Edit.__table__.columns.keys())
    assert {f.name for f in fields(StoredEdit)} == columns
    computed = {
        "id",
        "created_at",
        "superseded_by",
        "committed_into",
        "reverted_at",
        "delta_sha256",
        "row_sha256",
    }
    assert {f.name for f in fields(NewEdit)} == columns - computed


def test_record_and_get_round_trip(ledger: Ledger, url: str) -> None:
    new = make_edit(
        target_true="Paris",
        notes="from chat",
        hparams={"layers": [5], "lr": 0.5},
        delta=b"\x00\x01" * 1000,
        weights_before="a" * 64,
        weights_after="b" * 64,
        model_fingerprint="c" * 64,
        embedding=b"\x02" * 384,
        embedder="all-MiniLM-L6-v2",
    )
    stored = ledger.record_edit(new)
    assert stored.id == 1
    assert stored.created_at.tzinfo == timezone.utc
    assert len(stored.delta_sha256 or "") == len(stored.row_sha256) == 64
    for f in fields(NewEdit):
        assert getattr(stored, f.name) == getattr(new, f.name), f.name

    assert ledger.get(stored.id) == stored
    # A fresh process sees the same row, timestamps still aware UTC after SQLite dropped the offset.
    with Ledger.open(url) as again:
        assert again.get(stored.id) == stored


def test_edits_filters_and_order(ledger: Ledger) -> None:
    first = ledger.record_edit(make_edit())
    memory = ledger.record_edit(make_edit(method="serac", kind="memory"))
    failed = ledger.record_edit(make_edit(method="memit", status="failed", error="did not converge"))
    assert [e.id for e in ledger.edits()] == [first.id, memory.id, failed.id]
    assert [e.id for e in ledger.edits(status="active")] == [first.id, memory.id]
    assert [e.id for e in ledger.edits(kind="memory")] == [memory.id]
    assert [e.id for e in ledger.edits(method="memit")] == [failed.id]
    assert [e.id for e in ledger.edits(status="active", kind="weight", method="rome")] == [first.id]
    assert [e.id for e in ledger.active()] == [first.id, memory.id]
    assert [e.id for e in ledger.active(kind="weight")] == [first.id]
    assert ledger.get(failed.id).error == "did not converge"


@pytest.mark.parametrize("filters", [{"status": "gone"}, {"kind": "both"}])
def test_edits_rejects_unknown_filters(ledger: Ledger, filters: dict) -> None:
    with pytest.raises(LedgerError, match="use one of"):
        ledger.edits(**filters)


def test_record_edit_rejects_unknown_status_and_kind(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="unknown edit status"):
        ledger.record_edit(make_edit(status="pending"))
    with pytest.raises(LedgerError, match="unknown edit kind"):
        ledger.record_edit(make_edit(kind="both"))
    with pytest.raises(LedgerError, match="JSON"):
        ledger.record_edit(make_edit(hparams={"device": object()}))
    assert ledger.edits() == []


def test_set_status_revert_and_reactivate(ledger: Ledger) -> None:
    edit = ledger.record_edit(make_edit())
    reverted = ledger.set_status(edit.id, "reverted", notes="user asked", weights_after="d" * 64)
    assert reverted.status == "reverted"
    assert reverted.reverted_at is not None and reverted.reverted_at.tzinfo == timezone.utc
    assert reverted.notes == "user asked" and reverted.weights_after == "d" * 64
    assert reverted.row_sha256 != edit.row_sha256
    assert ledger.get(edit.id) == reverted

    again = ledger.set_status(edit.id, "active")
    assert again.reverted_at is None
    assert again.notes == "user asked"  # not given: kept
    assert ledger.verify() == []


def test_set_status_refuses_unknown_status_and_id(ledger: Ledger) -> None:
    edit = ledger.record_edit(make_edit())
    with pytest.raises(LedgerError, match="unknown edit status 'deleted'"):
        ledger.set_status(edit.id, "deleted")
    with pytest.raises(EditNotFound, match=r"no edit #42: list edits with `kbchat edits`"):
        ledger.set_status(42, "reverted")
    assert ledger.get(edit.id).status == "active"


def test_get_unknown_id(ledger: Ledger) -> None:
    with pytest.raises(EditNotFound, match=r"no edit #7: list edits with `kbchat edits`"):
        ledger.get(7)


def test_ids_are_never_reused(ledger: Ledger, url: str) -> None:
    ledger.record_edit(make_edit())
    last = ledger.record_edit(make_edit())
    raw_sql(url, "DELETE FROM edits WHERE id = :id", id=last.id)
    assert ledger.record_edit(make_edit()).id == last.id + 1


def test_record_converts_to_edit_record(ledger: Ledger) -> None:
    edit = ledger.record_edit(make_edit(target_true="Paris"))
    ledger.add_checks(edit.id, [check()])
    record = ledger.get(edit.id).record(ledger.checks(edit.id))
    assert isinstance(record, EditRecord)
    assert (record.id, record.subject, record.target, record.target_true) == (
        edit.id,
        edit.subject,
        "Rome",
        "Paris",
    )
    assert record.checks == (check(),)
    assert record.to_json()["created_at"].endswith("+00:00")


# --- supersede, retire, atomicity ----------------------------------------------------------------


def test_supersede_and_retire_in_one_call(ledger: Ledger) -> None:
    old = ledger.record_edit(make_edit(target="Rome"))
    a = ledger.record_edit(make_edit(subject="A", prompt="A is in", target="X"))
    b = ledger.record_edit(make_edit(subject="B", prompt="B is in", target="Y"))
    new = ledger.record_edit(
        make_edit(target="Berlin", method="memit"), supersede=[old.id], retire=[a.id, b.id]
    )

    assert (ledger.get(old.id).status, ledger.get(old.id).superseded_by) == ("superseded", new.id)
    for retired in (a, b):
        assert (ledger.get(retired.id).status, ledger.get(retired.id).committed_into) == ("committed", new.id)
    assert [e.id for e in ledger.active()] == [new.id]
    assert ledger.verify() == []  # fingerprints of the changed rows were refreshed


@pytest.mark.parametrize("argument", ["supersede", "retire"])
def test_unknown_id_in_supersede_or_retire_writes_nothing(ledger: Ledger, argument: str) -> None:
    old = ledger.record_edit(make_edit())
    with pytest.raises(EditNotFound, match="no edit #999"):
        ledger.record_edit(make_edit(target="Berlin"), **{argument: [old.id, 999]})
    assert ledger.edits() == [old]  # no new row, and #old untouched although it came first


def test_same_id_in_supersede_and_retire_is_refused(ledger: Ledger) -> None:
    old = ledger.record_edit(make_edit())
    with pytest.raises(LedgerError, match="both supersede and retire"):
        ledger.record_edit(make_edit(), supersede=[old.id], retire=[old.id])
    assert ledger.edits() == [old]


def test_database_error_mid_transaction_rolls_back(ledger: Ledger) -> None:
    old = ledger.record_edit(make_edit())
    # NOT NULL violation on insert: surfaces as LedgerError, not an SQLAlchemy exception.
    with pytest.raises(LedgerError, match="(?i)not.null"):  # SQLite: NOT NULL; PostgreSQL: not-null
        ledger.record_edit(replace(make_edit(), subject=None), supersede=[old.id])
    assert ledger.edits() == [old]


def test_failure_after_insert_and_supersede_rolls_back(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = ledger.record_edit(make_edit())
    real_digest = store_module.row_digest
    calls = []

    def failing_digest(row):
        calls.append(row.id)
        if len(calls) == 2:  # after the new row is flushed and #old is marked superseded
            raise RuntimeError("disk on fire")
        return real_digest(row)

    monkeypatch.setattr(store_module, "row_digest", failing_digest)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ledger.record_edit(make_edit(target="Berlin"), supersede=[old.id], retire=[])
    monkeypatch.undo()
    assert ledger.edits() == [old]


# --- checks and meta -----------------------------------------------------------------------------


def test_checks_round_trip_and_replace(ledger: Ledger) -> None:
    edit = ledger.record_edit(make_edit())
    other = ledger.record_edit(make_edit(subject="Other"))
    assert ledger.checks(edit.id) == ()

    reliability = check("reliability")
    locality = check("locality", probe="The Colosseum is in", passed=None)
    ledger.add_checks(edit.id, [reliability, locality])
    ledger.add_checks(other.id, [check("fluency")])
    assert ledger.checks(edit.id) == (reliability, locality)

    fresh = replace(locality, after="Rome", passed=True, score=None)
    ledger.replace_checks(edit.id, [fresh], metric="locality")
    assert ledger.checks(edit.id) == (reliability, fresh)

    ledger.replace_checks(edit.id, [check("portability")])
    assert ledger.checks(edit.id) == (check("portability"),)
    assert ledger.checks(other.id) == (check("fluency"),)


def test_checks_on_unknown_edit(ledger: Ledger) -> None:
    for call in (
        lambda: ledger.add_checks(5, [check()]),
        lambda: ledger.replace_checks(5, [check()]),
        lambda: ledger.checks(5),
    ):
        with pytest.raises(EditNotFound, match="no edit #5"):
            call()


def test_deleting_an_edit_cascades_to_its_checks(ledger: Ledger) -> None:
    edit = ledger.record_edit(make_edit())
    ledger.add_checks(edit.id, [check()])
    with ledger._engine.begin() as connection:  # foreign keys are on in kbchat's SQLite connections
        connection.execute(text("DELETE FROM edits WHERE id = :id"), {"id": edit.id})
        assert connection.execute(text("SELECT count(*) FROM checks")).scalar() == 0


def test_meta(ledger: Ledger) -> None:
    assert ledger.get_meta("model") is None
    assert ledger.get_meta("model", "none") == "none"
    ledger.set_meta("model", "SmolLM2-135M")
    ledger.set_meta("model", "SmolLM2-360M")
    assert ledger.get_meta("model") == "SmolLM2-360M"


# --- verify --------------------------------------------------------------------------------------


def test_verify_clean(ledger: Ledger) -> None:
    ledger.record_edit(make_edit(delta=b"\x01" * 64, embedding=b"\x02" * 8))
    ledger.record_edit(make_edit(method="ike", kind="memory"))
    assert ledger.verify() == []


def test_verify_detects_tampered_row(ledger: Ledger, url: str) -> None:
    ledger.record_edit(make_edit())
    tampered = ledger.record_edit(make_edit(subject="B"))
    raw_sql(url, "UPDATE edits SET target = 'Madrid' WHERE id = :id", id=tampered.id)
    problems = ledger.verify()
    assert len(problems) == 1
    assert problems[0].startswith(f"edit #{tampered.id}: row content")


def test_verify_detects_tampered_status(ledger: Ledger, url: str) -> None:
    edit = ledger.record_edit(make_edit())
    raw_sql(url, "UPDATE edits SET status = 'reverted' WHERE id = :id", id=edit.id)
    assert [p.split(":")[0] for p in ledger.verify()] == [f"edit #{edit.id}"]


def test_verify_detects_tampered_delta(ledger: Ledger, url: str) -> None:
    edit = ledger.record_edit(make_edit(delta=b"\x01" * 64))
    raw_sql(url, "UPDATE edits SET delta = :delta WHERE id = :id", delta=b"\x01" * 63 + b"\x02", id=edit.id)
    problems = ledger.verify()
    assert len(problems) == 1
    assert problems[0].startswith(f"edit #{edit.id}: delta sha256")
    assert edit.delta_sha256 in problems[0]


def test_verify_detects_removed_delta(ledger: Ledger, url: str) -> None:
    edit = ledger.record_edit(make_edit(delta=b"\x01" * 64))
    raw_sql(url, "UPDATE edits SET delta = NULL WHERE id = :id", id=edit.id)
    assert any("delta sha256 is missing" in p for p in ledger.verify())


# --- two processes -------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from kbchat.ledger import Ledger, NewEdit

    url, tag = sys.argv[1], sys.argv[2]
    with Ledger.open(url) as ledger:
        for i in range(40):
            ledger.record_edit(NewEdit(
                raw_text=f"{tag} {i}", subject=tag, prompt=f"{tag} is", relation="{} is",
                target=str(i), method="rome", kind="weight", delta=bytes([i]) * 256,
            ))
    """
)


def test_two_processes_write_concurrently(url: str, tmp_path: Path) -> None:
    # The database is empty (on SQLite the file does not exist yet): both processes also race to create
    # the schema.
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, tag],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("left", "right")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr

    with Ledger.open(url) as ledger:
        edits = ledger.edits()
        assert [e.id for e in edits] == list(range(1, 81))
        assert sorted(e.raw_text for e in edits) == sorted(
            f"{t} {i}" for t in ("left", "right") for i in range(40)
        )
        assert ledger.verify() == []
    if not url.startswith("sqlite"):
        return
    connection = sqlite3.connect(tmp_path / "ledger.db")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
