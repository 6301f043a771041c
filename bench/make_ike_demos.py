"""Build kbchat/data/ike_demos.json: IKE demonstrations (copy / update / retain) from CounterFact.

    .venv/bin/python -m bench.make_ike_demos ../shared/data/counterfact/counterfact-train.json 48
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kbchat.evaluation.datasets import load_cases

OUT = Path(__file__).resolve().parents[1] / "kbchat" / "data" / "ike_demos.json"


def demos(path: str, n: int) -> list[dict[str, str]]:
    rows = []
    for case in load_cases(path, limit=n):
        r = case.request
        fact = f"{r.text} {r.target}."
        rows.append({"kind": "copy", "fact": fact, "prompt": r.text, "answer": r.target})
        if case.paraphrases:
            rows.append({"kind": "update", "fact": fact, "prompt": case.paraphrases[0], "answer": r.target})
        if case.neighborhood:
            prompt, answer = case.neighborhood[0]
            rows.append({"kind": "retain", "fact": fact, "prompt": prompt, "answer": answer})
    return rows


if __name__ == "__main__":
    src, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 48
    OUT.write_text(json.dumps(demos(src, count), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
