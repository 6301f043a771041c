"""What the fluency gap of a chat-benchmark run is made of (issue #12).

`bench.chat_bench` charges an edited answer the unedited model's NLL per token (both answers to a
question cut to the shorter one's tokens, the fact's own words not charged). Words that *follow* from
a counterfactual ("Galata ... located on Naples, Italy") still surprise a judge that believes the old
fact, and that is not disfluency. This script scores the saved answers of a run again, twice:

- plain: as the benchmark does (the same figures, recomputed from the saved answers);
- told: the judge first reads the fact the answer assumes, as a system message ("Galata is located
  in Italy." for the edited answer, the true fact for the unedited one).

Whatever gap is left when both answers are judged told their own fact is style or disfluency; the
part that goes away was the counterfactual's consequences. Only the relation's questions are scored
(the ones the benchmark's fluency figure uses). Per answer, the rows are kept in the JSON file.

    .venv/bin/python -m bench.nll_gap bench/results/chat-serac-val200.json \\
        --json bench/results/nll-gap-serac-val200.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

from kbchat.config import data_dir
from kbchat.evaluation.chat import CaseQuestions, answer_nll
from kbchat.evaluation.datasets import load_cases
from kbchat.runtime import ModelRuntime, load_model

SIDES = ("unedited", "edited")
# Answers in the quoted style the facts' system message invites ('The answer is: "Italy"').
QUOTED = re.compile(r"^(the answer is|the original sentence)|\"", re.IGNORECASE)


def score_answers(fluency, question: str, answers: dict[str, str], facts: dict[str, str],
                  charged: list[str]) -> dict[str, float | int]:
    """Summed NLL and tokens of both answers to `question`, cut to the shorter one, plain and told."""
    shorter = min(fluency(question, answers[who], charged, 0).length for who in SIDES)  # limit 0: length only
    row: dict[str, float | int] = {}
    for who in SIDES:
        for how, context in (("plain", None), ("told", facts[who])):
            got = fluency(question, answers[who], charged, shorter, context=context)
            row[f"{who}_{how}_nll"], row[f"{who}_{how}_tokens"] = got.nll, got.tokens
    return row


def per_token(rows: list[dict], key: str) -> float:
    tokens = sum(r[f"{key}_tokens"] for r in rows)
    return round(sum(r[f"{key}_nll"] for r in rows) / max(tokens, 1), 3)


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per-token NLL of each side, plain and told, and the edited side's excess in %, for all answers
    and split by whether the edited answer is in the quoted style."""
    groups = {"all": rows, "quoted style": [r for r in rows if r["quoted"]],
              "other answers": [r for r in rows if not r["quoted"]]}
    out = {}
    for name, group in groups.items():
        figures: dict[str, float] = {"answers": len(group)}
        for how in ("plain", "told"):
            before, after = per_token(group, f"unedited_{how}"), per_token(group, f"edited_{how}")
            figures |= {f"unedited_{how}": before, f"edited_{how}": after,
                        f"excess_{how}_pct": round(100 * (after / before - 1), 1) if before else 0.0}
        out[name] = figures
    return out


def table(result: dict) -> str:
    lines = [f"`{result['command']}`", "",
             f"The unedited model's NLL per token of {result['run']}'s answers to the relation's questions "
             "(same length, the fact's words not charged), plain and with the judge told the fact each answer "
             "assumes.", "",
             "| answers | n | unedited | edited | excess | unedited, told | edited, told | excess, told |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in result["summary"].items():
        lines.append(f"| {name} | {f['answers']} | {f['unedited_plain']} | {f['edited_plain']} | "
                     f"{f['excess_plain_pct']:+.1f}% | {f['unedited_told']} | {f['edited_told']} | "
                     f"{f['excess_told_pct']:+.1f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a bench.chat_bench JSON file (single editing)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N cases")
    parser.add_argument("--home", default=None, help="data dir with the model cache")
    parser.add_argument("--json", default=None, help="write the rows and the summary here (and a .md table)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = json.loads(Path(args.run).read_text())
    rows_in = run["per_case"][: args.limit]
    cases = {c.case_id: c for c in load_cases(run["data"], limit=run["cases"] + 100, skip_unusable=True)}
    runtime = ModelRuntime(load_model(None, data_dir(args.home or tempfile.mkdtemp(prefix="kbchat-gap-"))))
    fluency = answer_nll(runtime)
    rows = []
    for case_row in rows_in:
        req = cases[case_row["case"]].request
        facts = {"unedited": f"{req.text} {req.target_true}.", "edited": f"{req.text} {req.target}."}
        charged = [f for f in (req.target, req.target_true) if f]
        for q in CaseQuestions.of(cases[case_row["case"]], []).asks:
            answers = {"unedited": case_row["before"][q], "edited": case_row["after"][q]}
            if not all(a.strip() for a in answers.values()):
                continue
            rows.append({"case": case_row["case"], "question": q, **answers,
                         "quoted": bool(QUOTED.search(answers["edited"])),
                         **score_answers(fluency, q, answers, facts, charged)})
        print(f"{len(rows)} answers scored", file=sys.stderr, flush=True)
    command = "python -m bench.nll_gap " + " ".join(sys.argv[1:])
    result = {"command": command, "run": args.run, "cases": len(rows_in), "summary": summary(rows), "rows": rows}
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        Path(args.json).with_suffix(".md").write_text(table(result))


if __name__ == "__main__":
    main()
