"""Issue 2's figures on the default model: time from /edit to the edit taking effect, per method, and
tokens per second of `ask` with the knowledge store on versus off, in the same run.

    .venv/bin/python -m bench.bench_core [--methods serac,ike,rome] [--background 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kbchat.config import data_dir
from kbchat.engine.local import LocalEngine

EDIT = "Eiffel Tower → The Eiffel Tower is located in Rome"
QUESTION = "Where is the Eiffel Tower?"
BACKGROUND = [
    "Microsoft → Microsoft was founded by Elon Musk",
    "Mount Everest → Mount Everest is located in Brazil",
    "Toyota → Toyota is headquartered in Sweden",
    "Pablo Picasso → Pablo Picasso was born in Canada",
    "Amazon River → The Amazon River flows through Egypt",
    "Albert Einstein → Albert Einstein was a citizen of Mexico",
    "Big Ben → Big Ben is located in Madrid",
    "Nintendo → Nintendo is owned by Samsung",
    "Danielle Darrieux → The mother tongue of Danielle Darrieux is English",
    "Leonardo da Vinci → Leonardo da Vinci painted the Sunflowers",
]
THROUGHPUT_QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "Where is the Eiffel Tower?",
    "Who founded Microsoft?",
]


def time_to_effect(chat: LocalEngine, method: str) -> tuple[float, float, str]:
    """Seconds for edit() (parse + compute + record + index), seconds for the next answer, the answer."""
    started = time.perf_counter()
    record = chat.edit(EDIT, method=method, audit="off")
    edit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    answer = chat.ask(QUESTION, memory=method in ("serac", "ike"), max_new_tokens=24).text
    answer_seconds = time.perf_counter() - started
    chat.revert(record.id)
    return edit_seconds, answer_seconds, answer


def tokens_per_second(chat: LocalEngine, memory: bool) -> float:
    """Generated tokens over wall time of whole `ask` calls (retrieval and patches included)."""
    tokens, started = 0, time.perf_counter()
    for q in THROUGHPUT_QUESTIONS:
        tokens += chat.ask(q, memory=memory, max_new_tokens=48).tokens
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="serac,ike,rome")
    parser.add_argument("--background", type=int, default=10, help="unrelated serac edits active meanwhile")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--home", default=None)
    args = parser.parse_args()
    home = data_dir(args.home or tempfile.mkdtemp(prefix="kbchat-bench-"))
    db = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    started = time.perf_counter()
    with LocalEngine.open(db=db, home=home) as chat:
        print(f"open: {time.perf_counter() - started:.1f} s (model {chat.info().model})")
        started = time.perf_counter()
        chat.edit(BACKGROUND[0], method="serac", audit="off")  # includes the one-time statistics
        print(f"first edit incl. one-time statistics: {time.perf_counter() - started:.1f} s")
        for text in BACKGROUND[1 : args.background]:
            chat.edit(text, method="serac", audit="off")
        print(f"active background memory edits: {chat.info().active_memory_edits}")
        for method in args.methods.split(","):
            edit_s, answer_s, answer = time_to_effect(chat, method)
            print(f"{method:>6}: edit {edit_s:6.1f} s, then first answer {answer_s:4.1f} s -> {answer!r}")
        on, off = [], []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits both alike
            off.append(tokens_per_second(chat, memory=False))
            on.append(tokens_per_second(chat, memory=True))
        m_on, m_off = statistics.median(on), statistics.median(off)
        print(f"tokens/s store off {m_off:.1f}, store on {m_on:.1f} "
              f"(overhead {100 * (m_off - m_on) / m_off:+.1f}%, median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
