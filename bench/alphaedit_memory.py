"""A process's memory over many sequential AlphaEdit solves, with glibc's default malloc settings and
with kbchat's (`kbchat.runtime.allocator`), and greedy answers' CPU time under both:

    .venv/bin/python -m bench.alphaedit_memory --edits 500 --json bench/results/alphaedit-prior-memory.json

The solves need no model: per edit and edited layer, K_p^T K_p over every earlier edit's key (random
keys of SmolLM2's MLP width, built as `methods.alphaedit` builds them), with an edit's other work
allocated in between. Each setting runs in a process of its own; a run stops at `--cap` MiB resident,
so that the comparison cannot take the machine's memory. The answers are the real model's, four chat
questions three times over, in alternating processes (`--rounds` each); so are the edits (`--parts edits`):
real sequential AlphaEdit edits on the first CounterFact val cases, each with the earlier ones as its prior.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from kbchat.runtime.allocator import return_large_blocks

WIDTH, LAYERS = 1536, 4
QUESTIONS = ("Where is the Eiffel Tower located?", "What language does Eric Partridge speak?",
             "Who developed Windows 95?", "What is the capital of Angola?")
SETTINGS = ("glibc default", "kbchat")
PARTS = ("solves", "answers", "edits")


def resident_mib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 2**20


def solves(edits: int, cap: int) -> dict[int, int]:
    """{edits made: resident MiB} every 50 edits, until `edits` or `cap` MiB."""
    torch.manual_seed(0)
    keys: list[list[torch.Tensor]] = [[] for _ in range(LAYERS)]
    rss: dict[int, int] = {}
    for n in range(1, edits + 1):
        for layer in keys:
            layer.append(torch.randn(1, WIDTH))  # (1, in): this edit's key, kept for later edits
            olds = torch.cat([k.double() for k in layer])  # (n, in)
            kept = olds.T @ olds + torch.eye(WIDTH, dtype=torch.float64)  # noqa: F841 — the solve's operand
            work = torch.randn(3000, 800)  # noqa: F841 — the edit's other work, allocated in between
        if n % 50 == 0:
            rss[n] = resident_mib()
            if rss[n] > cap:
                break
    return rss


def answer_seconds(home: str | None) -> float:
    """CPU seconds for the greedy answers (48 tokens) to QUESTIONS, three times over, one thread."""
    from kbchat.config import data_dir
    from kbchat.runtime.decoding import chat_input_ids, greedy_text
    from kbchat.runtime.loading import load_model

    loaded = load_model(None, data_dir(home))
    ids = [chat_input_ids(loaded.tokenizer, [{"role": "user", "content": q}], "cpu") for q in QUESTIONS]
    greedy_text(loaded.model, loaded.tokenizer, ids[0], 8)  # warm-up
    started = time.process_time()
    for _ in range(3):
        for prompt in ids:
            greedy_text(loaded.model, loaded.tokenizer, prompt, 48)
    return round(time.process_time() - started, 2)


def edit_seconds(home: str | None, edits: int) -> list[float]:
    """CPU seconds of each of `edits` sequential AlphaEdit edits (compute and apply; the statistics are
    computed before, untimed), one thread."""
    import methods
    from bench.bench_counterfact import DEFAULT_DATA, apply_keeping_first, prepare_statistics
    from kbchat.config import data_dir
    from kbchat.evaluation.datasets import load_cases
    from kbchat.runtime.loading import load_model

    loaded = load_model(None, data_dir(home))
    model, tokenizer = loaded.model, loaded.tokenizer
    model_id, stats = methods.model_fingerprint(model), methods.StatsCache(data_dir(home) / "stats")
    prepare_statistics(model, tokenizer, ["alphaedit"], stats, model_id)
    cases = [c for c in load_cases(str(DEFAULT_DATA), limit=edits * 2) if c.request.target_true][:edits]
    impl, deltas, originals, seconds = methods.get("alphaedit"), [], {}, []
    for case in cases:
        started = time.process_time()
        delta = impl.compute(model, tokenizer, [case.request], stats=stats, model_id=model_id, prior=deltas)
        apply_keeping_first(model, delta, originals)
        seconds.append(round(time.process_time() - started, 2))
        deltas.append(delta)
    return seconds


def child(args: argparse.Namespace) -> None:
    if args.setting == "kbchat":
        return_large_blocks()
    if args.part == "solves":
        print(json.dumps(solves(args.edits, args.cap)))
        return
    if args.setting != "kbchat":  # load_model would fix the threshold itself: not here
        import kbchat.runtime.loading as loading
        loading.return_large_blocks = lambda threshold=0: False
    if args.part == "answers":
        print(json.dumps(answer_seconds(args.home)))
    else:
        print(json.dumps(edit_seconds(args.home, args.real_edits)))


def run_child(args: argparse.Namespace, setting: str, part: str):
    command = [sys.executable, "-m", "bench.alphaedit_memory", "--setting", setting, "--part", part,
               "--edits", str(args.edits), "--real-edits", str(args.real_edits), "--cap", str(args.cap),
               *(["--home", args.home] if args.home else [])]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed_rounds(args: argparse.Namespace, part: str, unit: str) -> dict:
    """`part`'s CPU seconds under each setting, `--rounds` processes each, alternating so that drift in the
    machine's load hits both alike; the ratio kbchat / default of the totals."""
    times: dict[str, list] = {}
    for _ in range(args.rounds):
        for setting in SETTINGS:
            times.setdefault(setting, []).append(run_child(args, setting, part))
    total = {s: sum(t if isinstance(t, float) else sum(t) for t in times[s]) for s in SETTINGS}
    ratio = round(total["kbchat"] / total["glibc default"], 3)
    print(f"{unit} CPU seconds:", times, "ratio kbchat / default:", ratio, flush=True)
    return {f"{unit}_cpu_seconds": times, f"{unit}_time_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=500)
    parser.add_argument("--cap", type=int, default=6000, help="stop a run at this many MiB resident")
    parser.add_argument("--rounds", type=int, default=2, help="timed processes per setting (answers, edits)")
    parser.add_argument("--home", default=None)
    parser.add_argument("--setting", choices=SETTINGS, help="(internal) one setting, in this process")
    parser.add_argument("--parts", default="solves,answers", help="which of solves,answers,edits to run")
    parser.add_argument("--real-edits", type=int, default=8, help="edits: sequential AlphaEdit edits per process")
    parser.add_argument("--part", choices=PARTS, help="(internal)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.setting:
        child(args)
        return
    parts = args.parts.split(",")
    result: dict = {"command": "python -m bench.alphaedit_memory " + " ".join(sys.argv[1:]), "width": WIDTH,
                    "layers": LAYERS, "cap_mib": args.cap}
    if "solves" in parts:
        result["resident_mib"] = {}
        for setting in SETTINGS:
            result["resident_mib"][setting] = run_child(args, setting, "solves")
            print(setting, "resident MiB:", result["resident_mib"][setting], flush=True)
    for part, unit in (("answers", "answer"), ("edits", "edit")):
        if part in parts:
            result.update(timed_rounds(args, part, unit))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
