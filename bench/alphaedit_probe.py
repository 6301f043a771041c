"""AlphaEdit's null space, probed on single CounterFact *training* edits (for choosing its experimental
options before a long sequential run; never val):

    .venv/bin/python -m bench.alphaedit_probe --cases 8 \
        --configs '{"base": {}, "en05": {"nullspace_energy": 0.05}}' --json bench/results/alphaedit-probe.json

Per edit and configuration: efficacy and paraphrase efficacy (P(new) > P(old)); neighbourhood kept
(preference unchanged) and the neighbour prompts' mean shift of log P(new) - log P(true), in nats,
which moves long before a preference flips; the leak, tr(dW C dW^T) / ||dW k||^2 (the update's mean
effect on real text's keys per unit of effect on the edit's own key), averaged over the edited layers.
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
from bench.bench_counterfact import FIGURES
from kbchat.audit.probes import with_metric
from kbchat.config import data_dir
from kbchat.evaluation.datasets import load_cases
from kbchat.evaluation.metrics import target_logprobs
from kbchat.evaluation.probes import case_probes
from kbchat.runtime.loading import load_model
from methods import StatsCache

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-train.json"


def margins(model, tokenizer, case, figure: str) -> list[float]:
    """log P(new) - log P(true) on each of the case's prompts for `figure`."""
    r = case.request
    texts = [p.text for p in with_metric(case_probes(case, max_probes=None), FIGURES[figure])]
    scores = target_logprobs(model, tokenizer, [(t, r.target) for t in texts] + [(t, r.target_true) for t in texts])
    return [scores[i] - scores[len(texts) + i] for i in range(len(texts))]


def leak(delta: methods.Delta, covs: dict[str, torch.Tensor]) -> float:
    ratios = []
    for u in delta.updates:
        dw, k = u.matrix(), delta.extras[f"keys.{u.module}"]  # (out, in), (n, in)
        ratios.append(float(torch.trace(dw @ covs[u.module] @ dw.T) / (dw @ k.T).square().sum()))
    return statistics.mean(ratios)


def probe(model, tokenizer, case, before: list[float], hparams, stats: StatsCache, model_id: str) -> dict:
    """One edit's figures; `before` is the unedited model's neighbourhood margins for `case`."""
    impl = methods.get("alphaedit")
    started = time.perf_counter()
    delta = impl.compute(model, tokenizer, [case.request], hparams=hparams, stats=stats, model_id=model_id)
    seconds = time.perf_counter() - started
    covs = stats.second_moments(model, tokenizer, [u.module for u in delta.updates], hparams.stats, model_id=model_id)
    applied = delta.apply(model)
    after = {f: margins(model, tokenizer, case, f) for f in ("edit", "paraphrase", "neighbourhood")}
    applied.undo()
    return {
        "efficacy": statistics.mean(m > 0 for m in after["edit"]),
        "paraphrase": statistics.mean(m > 0 for m in after["paraphrase"]),
        "neighbourhood": statistics.mean((a > 0) == (b > 0) for a, b in zip(after["neighbourhood"], before, strict=True)),
        "neighbour_shift": statistics.mean(a - b for a, b in zip(after["neighbourhood"], before, strict=True)),
        "leak": leak(delta, covs),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(TRAIN))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--offset", type=int, default=1000, help="skip this many usable records first")
    parser.add_argument("--configs", type=json.loads, default={"base": {}}, help="name -> AlphaEdit hparams")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    home = data_dir(None)
    loaded = load_model(None, home)
    model, tokenizer = loaded.model, loaded.tokenizer
    stats, model_id = StatsCache(home / "stats"), methods.model_fingerprint(loaded.model)
    usable = [c for c in load_cases(args.data, limit=2 * (args.offset + args.cases)) if c.request.target_true]
    cases = usable[args.offset:args.offset + args.cases]
    rows: dict[str, list[dict]] = {name: [] for name in args.configs}
    for case in cases:
        before = margins(model, tokenizer, case, "neighbourhood")  # the same for every configuration
        for name, overrides in args.configs.items():
            hparams = methods.get("alphaedit").hparams_from_dict(model, overrides)
            rows[name].append(probe(model, tokenizer, case, before, hparams, stats, model_id))
            print(name, case.request.subject, json.dumps(rows[name][-1]), flush=True)
    summary = {name: {k: round(statistics.mean(r[k] for r in rs), 4) for k in rs[0]} for name, rs in rows.items()}
    out = {"command": "python -m bench.alphaedit_probe " + " ".join(sys.argv[1:]), "cases": len(cases),
           "configs": args.configs, "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
