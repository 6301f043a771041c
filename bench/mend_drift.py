"""How far the shipped MEND editor's edits move unrelated text: for CounterFact *training* records, the
step the library's search chooses and the drift (mean KL per token of the next-token distributions
on `MendHParams.drift_texts`, `methods.mend.reach.drift`) at that step and at four times it.

Run with `--no-bound` to see the steps an unbounded search takes (the evidence for `max_drift`).

    .venv/bin/python -m bench.mend_drift --cases 25 --json bench/results/mend-drift-train25.json [--no-bound]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import methods
from kbchat.config import data_dir
from kbchat.evaluation.datasets import load_cases
from kbchat.runtime.loading import load_model
from methods import StatsCache
from methods.mend.reach import drift

DATA = Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-train.json"


def measure(model, tokenizer, request: methods.EditRequest, hparams, stats: StatsCache, model_id: str) -> dict:
    """The chosen step and the drift at 1x and 4x the delta for one request."""
    delta = methods.get("mend").compute(model, tokenizer, [request], hparams, stats=stats, model_id=model_id)
    row = {"subject": request.subject, "target": request.target, "step": delta.meta["steps"][0]}
    for times in (1.0, 4.0):
        # a delta of one request is one row of factors: (1, out, R) x (1, in, R)
        factors = {u.module: ((times * u.left)[None], u.right[None]) for u in delta.updates}
        row[f"drift_x{times:g}"] = round(float(drift(model, tokenizer, factors, hparams.drift_texts)[0]), 5)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=25)
    parser.add_argument("--home", default=None, help="data dir with the model cache and statistics")
    parser.add_argument("--no-bound", action="store_true", help="search without max_drift")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    home = data_dir(args.home)
    loaded = load_model(None, home)
    model, tokenizer = loaded.model, loaded.tokenizer
    mend = methods.get("mend")
    hparams = mend.hparams(model, max_drift=None) if args.no_bound else mend.hparams(model)
    stats, model_id = StatsCache(home / "stats"), methods.model_fingerprint(model)
    rows = [measure(model, tokenizer, case.request, hparams, stats, model_id)
            for case in load_cases(DATA, limit=args.cases)]
    for row in rows:
        print(f"{row['subject'][:28]:28} step {row['step']:6g}  drift {row['drift_x1']:8.4f}  x4 {row['drift_x4']:8.4f}")
    if args.json:
        command = "python -m bench.mend_drift " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(json.dumps({"command": command, "max_drift": hparams.max_drift, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
