"""A learned editor's update, scaled: is its poor neighbourhood a matter of step size (issue #11)?

    python -m bench.editor_scale --method mend --limit 40 --json bench/results/editor-scale-mend.json

Each CounterFact val case's update is computed once and applied at each of `--scales` (the same
direction, shorter or longer); figures are CounterFact's own, as in `bench_counterfact`: efficacy and
paraphrase = P(new) > P(old), neighbourhood = the preference between the true and the new object on the
neighbourhood prompts unchanged from the unedited model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import methods
from bench.bench_counterfact import DEFAULT_DATA, mean, measure
from kbchat.config import data_dir
from kbchat.evaluation.datasets import load_cases
from kbchat.runtime import load_model

FIGURES = ("efficacy", "paraphrase", "neighbourhood")


def sweep(model, tokenizer, cases, method: str, scales: tuple[float, ...], editors: list[str]) -> dict:
    """Per scale, each figure's mean over `cases`; every update undone before the next."""
    impl = methods.get(method)
    acc: dict[float, dict[str, list[float]]] = {s: {f: [] for f in FIGURES} for s in scales}
    for case in cases:
        before = measure(model, tokenizer, case)
        delta = impl.compute(model, tokenizer, [case.request], editors=editors)
        for scale in scales:
            applied = delta.scaled(scale).apply(model)
            try:
                after = measure(model, tokenizer, case)
            finally:
                applied.undo()
            acc[scale]["efficacy"].append(mean(after["edit"]))
            acc[scale]["paraphrase"].append(mean(after["paraphrase"]))
            acc[scale]["neighbourhood"].append(mean([a == b for a, b in zip(after["neighbourhood"],
                                                                            before["neighbourhood"], strict=True)]))
    return {str(s): {f: round(sum(v) / len(v), 3) for f, v in acc[s].items()} for s in scales}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="mend", choices=("mend", "instructedit"))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--scales", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.25, 0.5, 0.75, 1.0))
    parser.add_argument("--editor", action="append", default=[], help="an editor file (default: the shipped one)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(None, data_dir(None))
    cases = [c for c in load_cases(args.data, limit=args.limit * 2) if c.request.target_true][: args.limit]
    result = {"command": "python -m bench.editor_scale " + " ".join(sys.argv[1:] if argv is None else argv),
              "method": args.method, "editors": args.editor or ["shipped"], "cases": len(cases),
              "by_scale": sweep(loaded.model, loaded.tokenizer, cases, args.method, args.scales, args.editor)}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
