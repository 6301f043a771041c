"""serac's strength check with and without cutting each judged answer once it names the target
(`kbchat.engine.strength`, `settle`): CPU seconds per check and the scale kept, on CounterFact
*training* records, in one run, alternating the order per record (ABBA) so load drift hits both.

The delta is ROME's with its default hyperparameters (serac's own compute adds nothing the check
depends on); the check is the engine's default: serac's scales, the follow-up check, steered answers,
the fact quoted.

    .venv/bin/python -m bench.check_speed --cases 12 --json bench/results/check-speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import methods
from kbchat.config import EngineSettings, data_dir
from kbchat.engine.planning import steer_for
from kbchat.engine.strength import strengthen
from kbchat.evaluation.datasets import load_cases
from kbchat.memory.active import fact_sentence, facts_message_for
from kbchat.runtime import ModelRuntime
from kbchat.runtime.loading import load_model
from methods import StatsCache

DATA = Path(__file__).resolve().parents[2] / "shared/data/counterfact/counterfact-train.json"


def timed_check(runtime: ModelRuntime, delta: methods.Delta, request: methods.EditRequest,
                settings: EngineSettings, settle: bool) -> tuple[float, float]:
    """(CPU seconds, scale kept) of one strength check as the engine runs it."""
    fact = fact_sentence(request.prompt.format(request.subject), request.target)
    steer = steer_for(settings, facts_message_for([fact]))
    started = time.process_time()
    kept = strengthen(runtime, delta, request, settings.serac_scales, fact, settings.serac_check_wordings,
                      settings.serac_check_follow_up, steer, settle=settle)
    return time.process_time() - started, float(kept.meta.get("scale", 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    home = data_dir(None)
    runtime = ModelRuntime(load_model(None, home))
    model, tokenizer = runtime.loaded.model, runtime.loaded.tokenizer
    stats, model_id = StatsCache(home / "stats"), methods.model_fingerprint(model)
    rome = methods.get("rome")
    settings = EngineSettings()
    cases = [c for c in load_cases(args.data, limit=2 * args.cases) if c.request.target_true][:args.cases]
    rows = []
    for i, case in enumerate(cases):
        delta = rome.compute(model, tokenizer, [case.request], hparams=rome.hparams_from_dict(model, {}),
                             stats=stats, model_id=model_id)
        order = (True, False) if i % 2 == 0 else (False, True)
        timed = {settle: timed_check(runtime, delta, case.request, settings, settle) for settle in order}
        row = {"subject": case.request.subject, "cut_seconds": round(timed[True][0], 2),
               "whole_seconds": round(timed[False][0], 2), "cut_scale": timed[True][1],
               "whole_scale": timed[False][1]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cut, whole = (sum(r[f"{k}_seconds"] for r in rows) for k in ("cut", "whole"))
    summary = {"cases": len(rows), "cut_cpu_seconds_mean": round(cut / len(rows), 2),
               "whole_cpu_seconds_mean": round(whole / len(rows), 2), "speedup": round(whole / cut, 2),
               "median_speedup": round(statistics.median(r["whole_seconds"] / r["cut_seconds"] for r in rows), 2),
               "same_scale": sum(r["cut_scale"] == r["whole_scale"] for r in rows)}
    print(json.dumps(summary))
    if args.json:
        out = {"command": "python -m bench.check_speed " + " ".join(sys.argv[1:]), "threads": 1,
               "summary": summary, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
