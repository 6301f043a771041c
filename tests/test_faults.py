"""Faults of the machine (issue #15): a full disk, a read-only data dir, a ledger locked by another
process for long, a damaged model folder. Each gives one clear line and a non-zero exit from the CLI,
and nothing in the ledger is lost or half-written.

The disk and read-only cases mount a small tmpfs, which needs root (CI runs as root); elsewhere they skip.
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbchat.ledger import Ledger
from tests.test_engine import BERLIN, EIFFEL, _kbchat


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode not in (0, -9), result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbchat: error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def statuses(db: str) -> list[tuple[int, str]]:
    with Ledger.open(db) as ledger:
        return [(e.id, e.status) for e in ledger.edits()]


def fill(disk: Path) -> None:
    """Take the disk's free space down to a few kilobytes."""
    with open(disk / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 16384)
                out.flush()
        except OSError:
            pass


def test_a_full_disk_refuses_the_edit_and_loses_nothing(tiny_model_dir, tiny_home, small_disk) -> None:
    db = f"sqlite:///{small_disk / 'ledger.db'}"
    assert _kbchat(["edit", BERLIN, "--no-audit"], tiny_model_dir, tiny_home, db).returncode == 0
    before = statuses(db)
    fill(small_disk)
    line = one_line_error(_kbchat(["edit", EIFFEL, "--method", "rome", "--no-audit"], tiny_model_dir, tiny_home, db))
    assert "full" in line or "disk" in line, line
    (small_disk / "filler").unlink()
    assert statuses(db) == before
    verify = _kbchat(["verify"], tiny_model_dir, tiny_home, db)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert _kbchat(["edit", EIFFEL, "--method", "rome", "--no-audit"], tiny_model_dir, tiny_home, db).returncode == 0


def test_a_read_only_ledger_refuses_writes_and_loses_nothing(tiny_model_dir, tiny_home, small_disk) -> None:
    db = f"sqlite:///{small_disk / 'ledger.db'}"
    assert _kbchat(["edit", BERLIN, "--no-audit"], tiny_model_dir, tiny_home, db).returncode == 0
    before = statuses(db)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        line = one_line_error(_kbchat(["edit", EIFFEL, "--no-audit"], tiny_model_dir, tiny_home, db))
        assert "read" in line.lower() or "open" in line.lower(), line
        one_line_error(_kbchat(["revert", str(before[0][0])], tiny_model_dir, tiny_home, db))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert statuses(db) == before
    assert _kbchat(["verify"], tiny_model_dir, tiny_home, db).returncode == 0


def test_a_ledger_locked_for_long_is_one_line_and_nothing_half_written(tiny_model_dir, tiny_home, tmp_path, monkeypatch) -> None:
    db_file = tmp_path / "ledger.db"
    db = f"sqlite:///{db_file}"
    assert _kbchat(["edit", BERLIN, "--no-audit"], tiny_model_dir, tiny_home, db).returncode == 0
    before = statuses(db)
    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding on
    try:
        monkeypatch.setenv("KBCHAT_LOCK_TIMEOUT", "1")
        line = one_line_error(_kbchat(["edit", EIFFEL, "--no-audit"], tiny_model_dir, tiny_home, db))
        assert "locked" in line and "KBCHAT_LOCK_TIMEOUT" in line, line
    finally:
        holder.rollback()
        holder.close()
    assert statuses(db) == before
    assert _kbchat(["edit", EIFFEL, "--no-audit"], tiny_model_dir, tiny_home, db).returncode == 0


def test_a_damaged_model_folder_is_one_line_naming_it(tiny_model_dir, tiny_home, tmp_path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # cut short
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    line = one_line_error(_kbchat(["ask", "Where?"], broken, tiny_home, db))
    assert str(broken) in line, line
    assert statuses(db) == []


@pytest.mark.parametrize("method", ["mend", "instructedit"])
def test_a_learned_editor_missing_for_this_model_is_one_line_with_the_command(tiny_model_dir, tiny_home, tmp_path, method):
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    line = one_line_error(_kbchat(["edit", EIFFEL, "--method", method, "--no-audit"], tiny_model_dir, tiny_home, db))
    assert f"kbchat train-editor --method {method}" in line, line
    assert statuses(db) == []
