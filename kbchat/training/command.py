"""`kbchat train-editor`: train a MEND or InstructEdit editor for the model the app loads.

The model is loaded exactly as the app loads it (`kbchat.runtime.load_model`), so the editor's
fingerprint is the one the edit pipeline looks for; the default output is
`<data dir>/editors/<method>-<model name>.safetensors`, where the app finds it. Training is
`methods.mend.train` (deterministic for a seed, resumable from the state file beside the output);
a tqdm bar on stderr shows the step, the edit and locality losses and the latest validation
success, and every step's figures go to `<out>.log.jsonl` (validations marked), for the curves.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from kbchat.errors import KbchatError
from kbchat.training import records as training_records

METHODS = ("mend", "instructedit")


class TrainEditorError(KbchatError):
    code = "train_editor"
    exit_code = 2


@dataclass(frozen=True)
class TrainOptions:
    method: str
    model: str | None = None
    home: str | None = None
    device: str | None = None
    steps: int = 2000
    out: str | None = None
    resume: bool = False
    tasks: tuple[str, ...] = training_records.TASKS
    seed: int = 0
    threads: int | None = None
    data: str | None = None
    batch_size: int = 4
    val_every: int = 50
    val_size: int = 48
    rank: int | None = None
    c_edit: float | None = None  # None: TrainConfig's defaults (EasyEdit's 0.1 / 1.0, lr 1e-4, alpha_lr 1e-2)
    c_loc: float | None = None
    lr: float | None = None
    alpha_lr: float | None = None
    at_subject: bool = False  # experimental: edit where the subject is read (MendHParams.at_subject)
    quiet: bool = False


def log_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".log.jsonl")


def default_out(home: Path, method: str, model_name: str) -> Path:
    return home / "editors" / f"{method}-{model_name}.safetensors"


def run_training(options: TrainOptions) -> dict:
    """Train; returns a summary (out path, best step and validation figures, seconds)."""
    import torch

    if options.method not in METHODS:
        raise TrainEditorError(f"unknown method {options.method!r} (train-editor trains: {', '.join(METHODS)})")
    if options.steps < 1:
        raise TrainEditorError("--steps must be at least 1")
    tasks = tuple(dict.fromkeys(training_records.task_name(t) for t in options.tasks))  # checked before loading
    data = Path(options.data) if options.data else training_records.default_data_dir()
    for rel in (training_records.COUNTERFACT_FILE, training_records.ZSRE_FILE):  # both define the split
        if not (data / rel).is_file():
            raise TrainEditorError(f"training data file not found: {data / rel} (pass --data DIR)")
    threads_before = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        return _run(options, tasks, data)
    finally:
        torch.set_num_threads(threads_before)


def _run(options: TrainOptions, tasks: tuple[str, ...], data: Path) -> dict:
    import torch

    from kbchat.config import data_dir
    from kbchat.runtime import load_model
    from methods import StatsCache
    from methods.mend import state_path, train

    home = data_dir(options.home)
    out_given = Path(options.out).expanduser() if options.out else None
    if options.resume and out_given is not None and not state_path(out_given).is_file():
        raise TrainEditorError(f"nothing to resume: {state_path(out_given)} does not exist")

    torch.manual_seed(options.seed)
    loaded = load_model(options.model, home, options.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    out = out_given or default_out(home, options.method, loaded.name)
    if options.resume and not state_path(out).is_file():
        raise TrainEditorError(f"nothing to resume: {state_path(out)} does not exist")

    split = training_records.build(data, tasks, tokenizer, seed=options.seed)
    config = _train_config(options, model)
    counts = split.counts()
    say = (lambda *a: None) if options.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    say(f"training {options.method} for {loaded.name}: "
        + ", ".join(f"{t} {c['train']} train / {min(c['val'], options.val_size)} val" for t, c in counts.items())
        + f"; {options.steps} steps of {options.batch_size} edits, validating every {options.val_every}")

    log = log_path(out)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "a" if options.resume else "w", encoding="utf-8") as log_file:
        bar = _bar(options, config.steps, log_file, started)
        try:
            result = train(model, tokenizer, split.train, split.val, config, progress=bar.report, out=out,
                           resume=options.resume, stats=StatsCache(home / "stats"))
        except ValueError as exc:  # resume mismatch, bad records: one line
            raise TrainEditorError(str(exc)) from exc
        finally:
            bar.close()
    return {
        "out": str(out),
        "method": options.method,
        "model": loaded.name,
        "steps": options.steps,
        "best_step": result.best_step,
        "best_val": result.best_val,
        "history": result.history,
        "seconds": round(result.seconds, 1),
        "log": str(log),
        "data": {str(p): training_records.sha256_file(p) for p in split.files},
        "records": counts,
    }


def _train_config(options: TrainOptions, model):
    """The editor's TrainConfig: the model's MEND hyperparameters, with what the options override."""
    from methods.hparams import MendHParams, for_model
    from methods.mend import TrainConfig
    from methods.mend.instruct import DEFAULT_TASKS

    hparams = for_model(MendHParams, model, at_subject=options.at_subject)
    if options.rank:
        hparams = replace(hparams, rank=options.rank)
    config = TrainConfig(steps=options.steps, batch_size=options.batch_size, val_every=options.val_every,
                         val_size=options.val_size, seed=options.seed,
                         instructions=options.method == "instructedit", tasks=DEFAULT_TASKS, hparams=hparams)
    weights = {k: getattr(options, k) for k in ("c_edit", "c_loc", "lr", "alpha_lr") if getattr(options, k) is not None}
    return replace(config, **weights)


class _Bar:
    def __init__(self, options: TrainOptions, steps: int, log_file, started: float) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=options.method, unit="step", file=sys.stderr, disable=options.quiet,
                        dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.log_file = log_file
        self.started = started
        self.val_every = options.val_every

    def report(self, status) -> None:
        if self.bar.n == 0 and status.step > 1:
            self.bar.update(status.step - 1)  # resumed
        self.bar.update(1)
        fields = {"edit": f"{status.edit_loss:.3f}", "loc": f"{status.loc_loss:.4f}"}
        if status.val_success is not None:
            fields["val_success"] = f"{status.val_success:.2f}"
            if status.val_kept is not None:
                fields["val_kept"] = f"{status.val_kept:.2f}"
            fields["best"] = status.best_step
        self.bar.set_postfix(fields, refresh=False)
        row = {"step": status.step, "edit_loss": status.edit_loss, "loc_loss": status.loc_loss,
               "seconds": round(time.monotonic() - self.started, 2)}
        if status.step % self.val_every == 0 or status.step == status.steps:  # train() validated here
            row.update(val_edit_loss=status.val_edit_loss, val_loc_loss=status.val_loc_loss,
                       val_success=status.val_success, val_kept=status.val_kept, best_step=status.best_step)
        self.log_file.write(json.dumps(row) + "\n")
        self.log_file.flush()

    def close(self) -> None:
        self.bar.close()


def _bar(options: TrainOptions, steps: int, log_file, started: float) -> _Bar:
    return _Bar(options, steps, log_file, started)


def usage_hint(out: str, method: str) -> str:
    return (f"editor written to {out}\n"
            f"it is found automatically for this model: kbchat edit \"SUBJECT → FACT\" --method {method}\n"
            f"(editors are looked for in <data dir>/editors/ and the shipped methods/mend/editors/)")


