"""Two `bench.chat_bench` runs compared answer by answer on the cases both asked (each case's answers
before and after its edit, and its follow-up), with their figures side by side: whether a change to
decoding or editing changed what the model says, and where.

    .venv/bin/python -m bench.chat_compare old.json new.json [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PARTS = ("before", "after", "follow_up")


def answers(case: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """(part, question) -> answer for one case's row (a follow-up is one (question, answer) pair)."""
    out: dict[tuple[str, str], Any] = {}
    for part in PARTS:
        value = case.get(part)
        if isinstance(value, dict):
            out.update({(part, q): a for q, a in value.items()})
        elif value is not None:
            out[(part, value[0])] = value[1]
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Answers both runs gave to the same question of the same case: how many are identical, and the
    others; every figure of either run as [old, new] rates."""
    old_cases = {c["case"]: c for c in old["per_case"]}
    differ, identical, cases = [], 0, 0
    for case in new["per_case"]:
        if case["case"] not in old_cases:
            continue
        cases += 1
        before, after = answers(old_cases[case["case"]]), answers(case)
        for key in before.keys() & after.keys():
            if before[key] == after[key]:
                identical += 1
            else:
                differ.append({"case": case["case"], "part": key[0], "question": key[1], "old": before[key],
                               "new": after[key]})
    names = dict.fromkeys([*old["figures"], *new["figures"]])
    figures = {k: [old["figures"].get(k, {}).get("rate"), new["figures"].get(k, {}).get("rate")] for k in names}
    return {"runs": [old.get("command"), new.get("command")], "cases": cases, "answers": identical + len(differ),
            "identical": identical, "differ": sorted(differ, key=lambda d: (d["case"], d["part"], d["question"])),
            "figures": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args()
    result = compare(*(json.loads(Path(p).read_text()) for p in (args.old, args.new)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: result[k] for k in ("cases", "answers", "identical")}))


if __name__ == "__main__":
    main()
