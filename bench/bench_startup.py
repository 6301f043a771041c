"""Process start → first token of `kbchat ask`, this tree against an earlier revision, in one run.

Both run from a fresh process on the same data dir (model cache warm, a ledger with one memory edit,
so the embedder and the index are part of the path), alternating ABAB so drift in the machine's speed
falls on both alike. The earlier revision runs from a `git worktree` of it.

    .venv/bin/python -m bench.bench_startup --baseline 1a68c36 [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kbchat.config import data_dir

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Where is the Eiffel Tower?"


def first_byte(tree: Path, environ: dict[str, str]) -> float:
    """Seconds from spawning `python -m kbchat.cli ask` in `tree` to the first byte of its answer."""
    started = time.perf_counter()
    with subprocess.Popen([sys.executable, "-m", "kbchat.cli", "ask", QUESTION, "--max-tokens", "4"], cwd=tree,
                          env={**environ, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        proc.stdout.read(1)
        seconds = time.perf_counter() - started
        proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"kbchat ask in {tree} exited {proc.returncode}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a git revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbchat-startup-") as tmp:
        old = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.baseline],
                       check=True, capture_output=True)
        try:
            home = Path(tmp) / "home"
            home.mkdir()
            (home / "models").symlink_to(data_dir() / "models")
            environ = {**os.environ, "KBCHAT_HOME": str(home), "KBCHAT_CONFIG": str(Path(tmp) / "none.toml"),
                       "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
            subprocess.run([sys.executable, "-m", "kbchat.cli", "edit", "Big Ben → Big Ben is located in Oslo",
                            "--no-audit"], cwd=old, env={**environ, "PYTHONPATH": str(old)}, check=True,
                           capture_output=True)  # a ledger both revisions open (the baseline's schema)
            times: dict[str, list[float]] = {"baseline": [], "this tree": []}
            for i in range(args.repeats):
                order = [("baseline", old), ("this tree", ROOT)]
                for name, tree in order if i % 2 == 0 else reversed(order):
                    times[name].append(round(first_byte(tree, environ), 2))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"command": "python -m bench.bench_startup " + " ".join(sys.argv[1:]), "baseline": args.baseline,
              "seconds": times, "median_s": {k: round(v, 2) for k, v in medians.items()}, "ratio": round(medians["baseline"] / medians["this tree"], 2),
              "loadavg": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
