"""bench.ledger_answers: a consistent copy of a ledger in use, and two runs compared answer by answer."""

from __future__ import annotations

import sqlite3

from bench.ledger_answers import compare, snapshot


def test_snapshot_copies_a_ledger_while_it_is_open(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "copy").mkdir()
    live = sqlite3.connect(tmp_path / "run" / "ledger.db")
    live.execute("pragma journal_mode=wal")
    live.execute("create table edits (id integer primary key, text text)")
    live.executemany("insert into edits (text) values (?)", [("a",), ("b",)])
    live.commit()
    url = snapshot(tmp_path / "run" / "ledger.db", tmp_path / "copy")
    live.execute("insert into edits (text) values ('c')")  # after the copy: not in it
    live.commit()
    assert url == f"sqlite:///{tmp_path / 'copy' / 'ledger.db'}"
    copy = sqlite3.connect(tmp_path / "copy" / "ledger.db")
    assert [r[0] for r in copy.execute("select text from edits order by id")] == ["a", "b"]
    copy.close()
    live.close()


def test_compare_counts_identical_answers_and_lists_the_others():
    ratios = {"latency_ratio_paired": 1.3, "latency_ratio_paired_edited": 1.7, "latency_ratio_paired_neighbours": 1.0}
    old = {"commit": "a1", "answers": {"q1": "Rome.", "q2": "Paris."}, **ratios}
    new = {"commit": "b2", "answers": {"q1": "Rome.", "q2": "Lyon."}, **ratios, "latency_ratio_paired": 1.1}
    out = compare(old, new)
    assert out["answers"] == 2 and out["identical"] == 1
    assert out["differ"] == [{"question": "q2", "old": "Paris.", "new": "Lyon."}]
    assert out["latency_ratio_paired"] == [1.3, 1.1] and out["commits"] == ["a1", "b2"]
