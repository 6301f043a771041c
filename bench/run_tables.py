"""Produce the results tables under bench/results/: `kbchat bench` for several methods in one process.

Same runner and checks as `kbchat bench --data F --method M --limit N`, but the model is loaded once
and each run writes both its table (.txt, with the command and the setting it ran in) and its
figures (.json) from one pass:

    .venv/bin/python -m bench.run_tables --data ../shared/data/counterfact/counterfact-val.json \\
        --methods rome,serac,memit,ft,ike --limit 50 --home DIR

`--data zsre-heldout` is the zsRE rows no shipped editor was trained on (`kbchat.training.records.
held_out_zsre_rows`, 82 of the 1,000); `--skip-done` leaves out the methods whose table this exact
command already wrote, so a stopped run of several methods carries on with the next.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from kbchat.engine.local import LocalEngine
from kbchat.evaluation.runner import run_bench
from kbchat.evaluation.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def held_out_file() -> str:
    """The held-out zsRE rows, written to a temporary file in their own (MEND) layout."""
    from kbchat.training.records import held_out_zsre_rows

    path = Path(tempfile.mkdtemp(prefix="kbchat-zsre-")) / "zsre-heldout.json"
    path.write_text(json.dumps(held_out_zsre_rows()))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--methods", default="rome,serac,memit,ft,ike")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--home", default=None, help="data dir with the model cache and statistics")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--skip-done", action="store_true", help="skip methods whose table this command wrote")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("zsre-heldout" if args.data == "zsre-heldout" else Path(args.data).stem.split("-")[0]) + \
        ("-sequential" if args.sequential else "")
    data = held_out_file() if args.data == "zsre-heldout" else args.data
    db = f"sqlite:///{tempfile.mkdtemp(prefix='kbchat-tables-')}/bench.db"  # no earlier edit is active
    with LocalEngine.open(db=db, home=args.home) as chat:
        setting = (f"model {chat.runtime.name}, device {chat.runtime.loaded.device.name}, {torch.get_num_threads()} torch "
                   f"thread(s), {platform.processor() or platform.machine()}, kbchat {_commit()}, "
                   f"{datetime.now(UTC):%Y-%m-%d}")
        for method in args.methods.split(","):
            command = (f"kbchat bench --data {args.data} --method {method} --limit {args.limit}"
                       + (" --sequential" if args.sequential else ""))
            if args.data == "zsre-heldout":  # not a file kbchat bench could be given
                command = f"python -m bench.run_tables --data zsre-heldout --methods {method} --limit {args.limit}"
            done = out / f"{stem}-{method}.json"
            if args.skip_done and done.is_file() and json.loads(done.read_text()).get("command") == command:
                print(f"{method}: done already ({done})", flush=True)
                continue
            started = time.perf_counter()
            result = run_bench(chat, data, method, limit=args.limit, sequential=args.sequential)
            wall = time.perf_counter() - started
            table = format_table(result)
            text = f"$ {command}\n# {setting}; whole run {wall / 60:.1f} min\n\n{table}\n"
            (out / f"{stem}-{method}.txt").write_text(text)
            (out / f"{stem}-{method}.json").write_text(
                json.dumps({"command": command, "setting": setting, "wall_seconds": round(wall, 1),
                            **result.figures()}, indent=1) + "\n")
            print(text, flush=True)


if __name__ == "__main__":
    main()
