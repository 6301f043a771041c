"""The Eiffel story's edit time and chat tokens/s on Gemma 3 270M beside SmolLM2-135M, in one run.

Both models are open at once (each with its own ledger, one data dir); the throughput rounds alternate
between them, so drift in machine load hits both alike. Per model: the one-time statistics (timed with
a first, unrelated serac edit), then for serac and rome: the edit's time, the answer to the Eiffel
question with it, an unrelated answer, and the answer after reverting; then chat tokens/s.

    .venv/bin/python -m bench.bench_models [--rounds 3] [--threads 1] [--out bench/results/models-gemma-smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kbchat.config import data_dir
from kbchat.engine.local import LocalEngine

MODELS = {"smollm2": None, "gemma3-270m": "gemma3-270m"}  # label -> --model (None: the default)
EDIT = "Eiffel Tower → The Eiffel Tower is located in Rome"
WARM_UP = "Microsoft → Microsoft was founded by Elon Musk"
QUESTION = "Where is the Eiffel Tower?"
UNRELATED = "What is the capital of France?"
THROUGHPUT_QUESTIONS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", QUESTION,
                        "Who founded Microsoft?"]
METHODS = ("serac", "rome")


def story(chat: LocalEngine, method: str) -> dict:
    memory = method == "serac"
    before = chat.ask(QUESTION, memory=memory, max_new_tokens=24).text
    unrelated_before = chat.ask(UNRELATED, memory=memory, max_new_tokens=24).text
    started = time.perf_counter()
    record = chat.edit(EDIT, method=method, audit="off")
    edit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    after = chat.ask(QUESTION, memory=memory, max_new_tokens=24).text
    answer_seconds = time.perf_counter() - started
    unrelated_after = chat.ask(UNRELATED, memory=memory, max_new_tokens=24).text
    chat.revert(record.id)
    reverted = chat.ask(QUESTION, memory=memory, max_new_tokens=24).text
    return {"edit_seconds": round(edit_seconds, 2), "first_answer_seconds": round(answer_seconds, 2),
            "before": before, "after": after, "rome_in_answer": "Rome" in after,
            "unrelated_before": unrelated_before, "unrelated_after": unrelated_after,
            "unrelated_unchanged": unrelated_before == unrelated_after, "reverted": reverted,
            "reverted_as_before": reverted == before}


def tokens_per_second(chat: LocalEngine) -> float:
    tokens, started = 0, time.perf_counter()
    for q in THROUGHPUT_QUESTIONS:
        tokens += chat.ask(q, max_new_tokens=48).tokens
    return tokens / (time.perf_counter() - started)


def markdown(result: dict) -> str:
    rows = ["| model | open s | statistics (first edit) s | method | edit s | answer after the edit | "
            "unrelated unchanged | after revert as before |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in result["models"].items():
        for method, s in r["story"].items():
            rows.append(f"| {label} | {r['open_seconds']} | {r['first_edit_seconds']} | {method} | "
                        f"{s['edit_seconds']} | {s['after']!r} | {s['unrelated_unchanged']} | "
                        f"{s['reverted_as_before']} |")
    speed = ["| model | parameters | chat tokens/s (median) | rounds |", "| --- | --- | --- | --- |"]
    for label, r in result["models"].items():
        speed.append(f"| {label} | {r['parameters'] / 1e6:.0f}M | {r['tokens_per_second']} | "
                     f"{', '.join(map(str, r['tokens_per_second_rounds']))} |")
    caches = ("includes the one-time layer statistics, and 'open' the one-time dequantisation (a fresh data dir)"
              if result["fresh_home"] else "found the statistics, and 'open' the model, cached in the data dir")
    return "\n".join([
        "# Gemma 3 270M beside SmolLM2-135M: the Eiffel story and chat speed",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['machine']} (shared: 1-min load average {result['load_average_start']} at the start, "
        f"{result['load_average_end']} at the end), torch threads {result['threads']}, float32 on CPU, one run, "
        f"{result['date']}. Edit time is `edit()` (parse, compute, record, index); the first edit "
        f"(an unrelated serac edit) {caches}. "
        f"Tokens/s: whole `ask` calls over {len(THROUGHPUT_QUESTIONS)} questions (up to 48 tokens each), "
        "rounds alternating between the models.",
        "",
        *rows,
        "",
        *speed,
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", default=None)
    parser.add_argument("--out", default="bench/results/models-gemma-smollm2")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    home = data_dir(args.home or tempfile.mkdtemp(prefix="kbchat-bench-"))
    ledgers = Path(tempfile.mkdtemp())
    chats: dict[str, LocalEngine] = {}
    result: dict = {"command": "python -m bench.bench_models " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "threads": args.threads, "date": time.strftime("%Y-%m-%d"), "fresh_home": args.home is None,
                    "load_average_start": round(os.getloadavg()[0], 2), "models": {}}
    try:
        for label, model in MODELS.items():
            started = time.perf_counter()
            chat = chats[label] = LocalEngine.open(db=f"sqlite:///{ledgers / label}.db", model=model, home=home)
            entry = result["models"][label] = {"model": chat.info().model,
                                               "open_seconds": round(time.perf_counter() - started, 1),
                                               "parameters": sum(p.numel() for p in chat.runtime.loaded.model.parameters())}
            started = time.perf_counter()
            warm = chat.edit(WARM_UP, method="serac", audit="off")  # ROME's layer statistics, once
            entry["first_edit_seconds"] = round(time.perf_counter() - started, 1)
            chat.revert(warm.id)
            entry["story"] = {method: story(chat, method) for method in METHODS}
            print(label, json.dumps(entry, indent=1), flush=True)
        rounds: dict[str, list[float]] = {label: [] for label in chats}
        for _ in range(args.rounds):
            for label, chat in chats.items():
                rounds[label].append(round(tokens_per_second(chat), 2))
        for label, values in rounds.items():
            result["models"][label]["tokens_per_second_rounds"] = values
            result["models"][label]["tokens_per_second"] = round(statistics.median(values), 2)
    finally:
        for chat in chats.values():
            chat.close()
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
