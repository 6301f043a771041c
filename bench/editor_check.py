"""A learned editor's chat check with and without its screen (`kbchat.engine.strength.could_name`):
the scale each keeps (or none) and CPU seconds per check, on CounterFact *training* records, in one
run, the order alternated per record (ABBA) so load drift hits both.

Unscreened: `first_naming` over `EngineSettings.editor_scales`, steered, as the app checked until
2026-12-05. Screened (the app's way now): the plain patched answer at the largest scale first, and the
full check only when it names the target. The delta is the app's own (`EditPipeline.compute`, the
shipped editor), computed once per record.

    .venv/bin/python -m bench.editor_check --method mend --cases 24 --json bench/results/editor-check-mend.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from kbchat.config import EngineSettings, data_dir
from kbchat.engine.local import LocalEngine
from kbchat.engine.planning import weight_steer_for
from kbchat.engine.strength import first_naming, screened_naming
from kbchat.evaluation.datasets import load_cases
from kbchat.records import no_progress

DATA = Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-train.json"


def checked(engine: LocalEngine, delta, request, screened: bool) -> tuple[float | None, float]:
    """(the scale kept, None when none names the target; CPU seconds) of one check."""
    settings = engine.settings
    check = screened_naming if screened else first_naming
    started = time.process_time()
    named = check(engine.runtime, delta, request, settings.editor_scales, steer=weight_steer_for(settings))
    seconds = time.process_time() - started
    return (None if named is None else float(named.meta.get("scale", 1.0))), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--method", default="mend")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--skip", type=int, default=200, help="records skipped first (other benchmarks' rows)")
    parser.add_argument("--home", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = load_cases(args.data, limit=args.skip + args.cases, skip_unusable=True)[args.skip:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            LocalEngine.open(db=f"sqlite:///{tmp}/ledger.db", home=data_dir(args.home),
                             settings=EngineSettings()) as engine:
        for i, case in enumerate(cases):
            delta = engine.pipeline.compute(args.method, [case.request], no_progress, {})
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {screened: checked(engine, delta, case.request, screened) for screened in order}
            row = {"case": case.case_id, "subject": case.request.subject, "reached": delta.meta.get("reached"),
                   "full_scale": got[False][0], "full_seconds": round(got[False][1], 2),
                   "screened_scale": got[True][0], "screened_seconds": round(got[True][1], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    full, screened = (sum(r[f"{k}_seconds"] for r in rows) for k in ("full", "screened"))
    summary = {"cases": len(rows), "same_verdict": sum(r["full_scale"] == r["screened_scale"] for r in rows),
               "named_by_full_check": sum(r["full_scale"] is not None for r in rows),
               "full_cpu_seconds_mean": round(full / len(rows), 2),
               "screened_cpu_seconds_mean": round(screened / len(rows), 2), "speedup": round(full / screened, 2)}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": "python -m bench.editor_check " + " ".join(sys.argv[1:]), "threads": 1,
             "scales": list(EngineSettings().editor_scales), "summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
