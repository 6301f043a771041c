"""Two processes adding 1,000 memory edits to one SQLite ledger lose nothing, and a third process that
was open all along catches up (issue #15): `MemoryBook.sync` on its next question."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kbchat.ledger import Ledger
from kbchat.memory.book import MemoryBook
from tests.engines import WordEmbedder

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys
from kbchat.ledger import Ledger, NewEdit
from kbchat.memory.book import MemoryBook
from tests.engines import WordEmbedder

url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Ledger.open(url) as ledger:
    book = MemoryBook(ledger, WordEmbedder())
    book.load()
    for i in range(count):
        subject = f"Place {tag}{i}"
        new = NewEdit(raw_text=f"{subject} -> {subject} is located in Town{i}", subject=subject,
                      prompt=f"{subject} is located in", relation="{} is located in", target=f"Town{i}",
                      method="ike", kind="memory", embedder=book.embedder.name,
                      embedding=book.key_vector(subject, f"{subject} is located in", f"Town{i}").tobytes())
        book.record(new, book.key_vector(subject, new.prompt, new.target))
"""


def test_two_writers_lose_nothing_and_a_third_process_catches_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url) as ledger:
        watcher = MemoryBook(ledger, WordEmbedder())
        assert watcher.load() == []
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, tag, "500"], cwd=REPO,
                                    stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
        watcher.sync()  # while they write: whatever it sees now must not be counted twice later
        for writer in writers:
            _, err = writer.communicate(timeout=600)
            assert writer.returncode == 0, err[-2000:]
        rows = ledger.active(kind="memory")
        assert len(rows) == 1000 and len({r.subject for r in rows}) == 1000
        watcher.sync()
        assert len(watcher) == 1000
        assert watcher.sync().added == ()  # nothing new: one cheap query
        found = watcher.retrieve("Where is Place b417?")
        assert found and found[0].subject == "Place b417"
        # another process reverts one: the watcher drops it on its next look
        other = MemoryBook(Ledger.open(url), WordEmbedder())
        other.load()
        other.revert(found[0].id)
        other.ledger.close()
        changes = watcher.sync()
        assert changes.removed == (found[0].id,) and changes.added == ()
        assert all(r.subject != "Place b417" for r in watcher.retrieve("Where is Place b417?"))
