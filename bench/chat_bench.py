"""The chat benchmark (issue #12) on the default model: edits typed as `SUBJECT → FACT`, answers to
chat questions, subject names intact, fluency, follow-ups, neighbours (kbchat.evaluation.chat).

    .venv/bin/python -m bench.chat_bench --data ../shared/data/counterfact/counterfact-val.json \\
        --limit 40 --method serac --json bench/results/chat-serac-40.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from kbchat.config import data_dir
from kbchat.engine.local import LocalEngine
from kbchat.evaluation.chat import answer_nll, run_chat_bench
from kbchat.evaluation.datasets import load_cases
from kbchat.evaluation.tables import format_chat_table


def save(result: dict, args: argparse.Namespace, started: float) -> None:
    """Write `result` (the run so far, or all of it) to --json, with the command and its Markdown table."""
    result["command"] = "python -m bench.chat_bench " + " ".join(sys.argv[1:])
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False))
        Path(args.json).with_suffix(".md").write_text(f"`{result['command']}`\n\n{format_chat_table(result)}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/counterfact/"
                                              "counterfact-val.json"))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--method", default="serac")
    parser.add_argument("--home", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = load_cases(args.data, limit=args.limit, skip_unusable=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, \
            LocalEngine.open(db=f"sqlite:///{tmp}/ledger.db", home=data_dir(args.home)) as engine:
        result = run_chat_bench(engine, cases, args.method, answer_nll(engine.runtime),
                                log=lambda line: print(line, file=sys.stderr, flush=True),
                                sequential=args.sequential, partial=lambda r: save(r, args, started))
    save(result, args, started)
    print(format_chat_table(result))


if __name__ == "__main__":
    main()
