"""Answers on a saved `bench.many_edits` ledger, with whichever code is checked out: the run's sampled
edited questions (at `--at` edits) and its neighbour and canary questions, each asked with the ledger
and at once with memory off, so that the CPU time ratio is taken under one load (the run's
`latency_ratio_paired`). Every answer goes to `--json`, so two commits' runs on the same ledger can be
compared answer by answer (`--compare`):

    .venv/bin/python -m bench.ledger_answers --state DIR --at 1000 --json old.json   # at one commit
    .venv/bin/python -m bench.ledger_answers --state DIR --at 1000 --json new.json   # at another
    .venv/bin/python -m bench.ledger_answers --compare old.json new.json

The ledger is copied first (SQLite's backup), so a run still writing to DIR is not disturbed.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.many_edits import (
    DATA,
    Progress,
    ask_paired,
    distinct_subjects,
    neighbour_questions,
    ratio,
    sampled,
)
from kbchat.audit.relations import questions
from kbchat.config import data_dir
from kbchat.engine.local import LocalEngine
from kbchat.evaluation.datasets import load_cases
from kbchat.evaluation.metrics import mentions


def snapshot(ledger: Path, folder: Path) -> str:
    """A consistent copy of the SQLite `ledger` in `folder`; its database URL."""
    src, dst = sqlite3.connect(ledger), sqlite3.connect(folder / "ledger.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return f"sqlite:///{folder / 'ledger.db'}"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cases = load_cases(args.data, skip_unusable=True)
    edits = distinct_subjects(cases, args.edits)
    neighbours = neighbour_questions(cases, edits, args.neighbours)
    order = random.Random(args.seed).sample(range(len(edits)), len(edits))
    picked = {questions(edits[i].request)[0]: edits[i].request.target for i in sampled(order, args.at, args.sample)}
    asks = list(picked)
    with tempfile.TemporaryDirectory() as tmp:
        db = snapshot(Path(args.state) / "ledger.db", Path(tmp))
        with LocalEngine.open(db=db, home=data_dir(args.home)) as engine:
            active = engine.info().active_memory_edits
            now, off = ask_paired(engine, [*asks, *neighbours])
    base = Progress(Path(args.state)).base  # the run's empty-ledger answers, when at hand
    return {"command": "python -m bench.ledger_answers " + " ".join(sys.argv[1:]), "commit": _commit(),
            "active_memory_edits": active, "threads": torch.get_num_threads(),
            "reliability": round(sum(mentions(now[q].text, t) for q, t in picked.items()) / len(picked), 3),
            "neighbours_unchanged": round(sum(now[q].text == base[q].text for q in neighbours) / len(neighbours), 3)
            if all(q in base for q in neighbours) else None,
            "latency_ratio_paired": ratio(now, off, [*asks, *neighbours]),
            "latency_ratio_paired_edited": ratio(now, off, asks),
            "latency_ratio_paired_neighbours": ratio(now, off, neighbours),
            "edited": asks, "neighbours": neighbours,
            "answers": {q: now[q].text for q in now}, "memory_off_answers": {q: off[q].text for q in off},
            "cpu_seconds": {q: [round(now[q].cpu, 3), round(off[q].cpu, 3)] for q in now}}


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """How many answers two runs share word for word, and their paired ratios side by side."""
    differ = [{"question": q, "old": a, "new": new["answers"].get(q)} for q, a in old["answers"].items()
              if new["answers"].get(q) != a]
    keys = ("reliability", "neighbours_unchanged", "latency_ratio_paired", "latency_ratio_paired_edited",
            "latency_ratio_paired_neighbours")
    return {"commits": [old["commit"], new["commit"]], "answers": len(old["answers"]),
            "identical": len(old["answers"]) - len(differ), "differ": differ,
            **{k: [old.get(k), new.get(k)] for k in keys}}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", help="a bench.many_edits --state folder")
    parser.add_argument("--at", type=int, default=1000, help="the checkpoint whose sampled edits are asked")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--edits", type=int, default=1000, help="as the run's --edits")
    parser.add_argument("--sample", type=int, default=40)
    parser.add_argument("--neighbours", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two --json files")
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(Path(f).read_text()) for f in args.compare)
        result = compare(old, new)
    else:
        if not args.state:
            parser.error("--state is required (or --compare)")
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        result = measure(args)
        result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text if args.compare else json.dumps({k: v for k, v in result.items() if "ratio" in k}))


if __name__ == "__main__":
    main()
