"""The chat benchmark (issue #12) on the default model: edits typed as `SUBJECT → FACT`, answers to
chat questions, subject names intact, fluency, follow-ups, neighbours (kbchat.evaluation.chat).

    .venv/bin/python -m bench.chat_bench --data ../shared/data/counterfact/counterfact-val.json \\
        --limit 40 --method serac --json bench/results/chat-serac-40.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from kbchat.config import data_dir
from kbchat.engine.local import LocalEngine
from kbchat.evaluation.chat import run_chat_bench
from kbchat.evaluation.datasets import load_cases


def answer_nll(engine: LocalEngine):
    """fluency(question, answer) -> (summed NLL, tokens) of the answer under the unedited model."""
    from kbchat.evaluation.metrics import target_logprobs
    from kbchat.runtime.decoding import chat_text

    tokenizer = engine.runtime.loaded.tokenizer

    def fluency(question: str, answer: str) -> tuple[float, int]:
        if not answer.strip():
            return 0.0, 0
        prompt = chat_text(tokenizer, [{"role": "user", "content": question}])
        tokens = len(tokenizer(" " + answer, add_special_tokens=False)["input_ids"])
        return -engine.runtime.score(target_logprobs, [(prompt, answer)])[0], tokens

    return fluency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/counterfact/"
                                              "counterfact-val.json"))
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--method", default="serac")
    parser.add_argument("--home", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = load_cases(args.data, limit=args.limit, skip_unusable=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, \
            LocalEngine.open(db=f"sqlite:///{tmp}/ledger.db", home=data_dir(args.home)) as engine:
        result = run_chat_bench(engine, cases, args.method, answer_nll(engine),
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    result["command"] = "python -m bench.chat_bench " + " ".join(sys.argv[1:])
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result["figures"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
