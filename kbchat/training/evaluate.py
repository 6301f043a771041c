"""Held-out validation figures of a trained editor, per task, beyond the records training scored.

    python -m kbchat.training.evaluate EDITOR.safetensors [--n 48] [--threads 1] [--json OUT]

Uses the validation split of `kbchat.training.records.build(seed=...)` (no record of it was trained on),
skipping the first `--skip` records (those `train-editor --val-size` scored to pick the checkpoint), and
reports per task (a task the editor was not trained on, `--tasks` of train-editor, with its own
instruction): the edit loss (target NLL on the paraphrase after the edit), the locality KL and the edit
success (every target token the argmax on the paraphrase), with each record's edit loss in order
(`edit_rows`: two editors scored on the same records can be compared pair by pair). An InstructEdit
editor is scored with a training wording of each task's instruction and with the held-out wording.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def evaluate(editor_path: Path, n: int = 48, skip: int = 24, seed: int = 0, model: str | None = None,
             home: str | None = None) -> dict:
    from kbchat.config import data_dir
    from kbchat.runtime import load_model
    from kbchat.training import records
    from methods import StatsCache
    from methods.mend import TrainConfig, load_editor
    from methods.mend.training import training_whitening, validate
    from methods.stats import model_fingerprint

    loaded = load_model(model, data_dir(home))
    editor = load_editor(editor_path, model_fingerprint(loaded.model))
    inverses = training_whitening(loaded.model, loaded.tokenizer, editor, StatsCache(data_dir(home) / "stats"))
    split = records.build(None, records.TASKS, loaded.tokenizer, seed=seed)
    chosen = split.val[skip : skip + n]
    kind = editor.spec.kind
    # Every task's instruction is known, trained on or not: a held-out task is evaluated with its own.
    trained = {t.name for t in editor.spec.tasks}
    tasks = (*editor.spec.tasks, *(t for t in TrainConfig().tasks if t.name not in trained))
    config = TrainConfig(instructions=kind == "instructedit", tasks=tasks)
    wordings = {"training wording": 0}
    if kind == "instructedit":
        wordings["held-out wording"] = editor.spec.tasks[0].held_out_wording
    out: dict = {"editor": str(editor_path), "kind": kind, "records": len(chosen), "skip": skip, "results": {}}
    for label, wording in wordings.items():
        per_task = {}
        for task in records.TASKS:
            group = [r for r in chosen if r.task == task]
            if group:
                started = time.monotonic()
                per_task[task] = {**validate(loaded.model, loaded.tokenizer, editor, group, config, wording, inverses,
                                             per_record=True),
                                  "n": len(group), "seconds": round(time.monotonic() - started, 1)}
        out["results"][label] = per_task
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="held-out validation figures of a trained editor")
    parser.add_argument("editor", type=Path)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--skip", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = evaluate(args.editor, args.n, args.skip, args.seed, args.model)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
