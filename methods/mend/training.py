"""Training a MEND or InstructEdit editor (Mitchell et al. 2022's objective).

Each step samples a batch of edits, captures (x, delta) on each edit input with one forward/backward
pass, lets the editor turn them into per-edit updates, and applies those functionally (through hooks;
the weights never change) to measure
    loss = c_edit * NLL(target | paraphrase, edited) + c_loc * KL(original || edited) on an unrelated input.
When the unrelated input comes with its answer (CounterFact's neighbour: another subject, the same
relation, its true object), the KL is taken only where the answer's tokens are predicted: that is
where an editor that generalises to the relation instead of the subject shows, and averaging over the
whole input dilutes it roughly tenfold (the shipped editors of the first runs kept only 35-40% of
neighbours so).
Adam trains the networks and the per-matrix steps alpha, with gradient clipping. Every `val_every`
steps the held-out edits are scored; the best editor is kept in `out`, and the full training state
(editor, optimiser, step, RNG, statistics) beside it, so that `resume=True` carries on exactly.
InstructEdit is the same loop with each edit input behind its task's instruction (a sampled training
wording); tasks are sampled uniformly, then a record of that task.
An editor `at_subject` (experimental) takes its pairs at the subject's last token in the locate-then-edit
layers, and its update is whitened inside the loop exactly as `compute` will whiten it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from methods.architecture import architecture_of
from methods.delta import weight_of
from methods.hooks import frozen
from methods.hparams import MendHParams, for_model
from methods.mend.batch import TokenBatch, encode, row_hits, row_kl, row_nll
from methods.mend.checkpoint import load_state, read_spec, save_editor, save_state, state_path
from methods.mend.compute import edit_signals, editor_factors
from methods.mend.editor import Editor, EditorSpec
from methods.mend.instruct import DEFAULT_TASKS, Task, find_task, wrap
from methods.mend.reach import Inverses, edited, whitened, whitening
from methods.stats import StatsCache, model_fingerprint


@dataclass(frozen=True)
class EditRecord:
    """One training or validation edit; the texts have the subject filled in and end before the target."""

    prompt: str  # the edit input (its gradient is what the editor sees)
    subject: str
    target: str
    paraphrase: str  # another wording of the prompt: the edit loss is measured here
    locality: str  # an unrelated input whose next-token distributions must not move
    task: str = "counterfactual completion"  # a Task name (InstructEdit wraps the prompt in its instruction)
    locality_answer: str | None = None  # the locality input's true answer: the KL is then taken on it alone


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 4  # edits per step, each with its own update
    lr: float = 1e-4  # Adam on the editor networks
    alpha_lr: float = 1e-2  # Adam on log alpha: each step changes a matrix's alpha by at most ~1%
    c_edit: float = 0.1  # EasyEdit's weights
    c_loc: float = 1.0
    grad_clip: float = 100.0  # MEND's
    val_every: int = 100
    val_size: int = 64  # held-out edits scored at each validation
    seed: int = 0
    instructions: bool = False  # InstructEdit: wrap each edit input in its task's instruction
    tasks: tuple[Task, ...] = DEFAULT_TASKS
    hparams: MendHParams | None = None  # the editor's shape; the model's defaults when None

    @property
    def kind(self) -> str:
        return "instructedit" if self.instructions else "mend"


@dataclass(frozen=True)
class TrainStatus:
    """Reported after every step; the `val_*` fields are those of the latest validation."""

    step: int
    steps: int
    edit_loss: float
    loc_loss: float
    val_edit_loss: float | None
    val_loc_loss: float | None
    val_success: float | None  # share of held-out edits whose paraphrase yields every target token
    best_step: int
    val_kept: float | None = None  # share of held-out locality answers whose log P moved < 1 nat


@dataclass(frozen=True)
class TrainResult:
    out: Path
    best_step: int
    best_val: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    seconds: float = 0.0


def new_spec(model: nn.Module, hparams: MendHParams, kind: str, model_id: str, tasks: Sequence[Task]) -> EditorSpec:
    """The spec of a fresh editor for every MLP matrix of `hparams.layers` (for an editor `at_subject`: the
    output matrix of each of `hparams.subject_layers`, whitened with `hparams.subject_ridge`)."""
    arch = architecture_of(model)
    if hparams.at_subject:
        names = [arch.mlp_out_name(layer) for layer in hparams.subject_layers]
    else:
        names = [name for layer in hparams.layers for name in arch.mlp_matrix_names(layer)]
    modules = tuple((name, *map(int, weight_of(model.get_submodule(name)).shape)) for name in names)
    alpha = hparams.subject_alpha_init if hparams.at_subject else hparams.alpha_init
    return EditorSpec(kind, arch.family, model_id, modules, hparams.rank, hparams.n_hidden,
                      alpha, tuple(tasks) if kind == "instructedit" else (),
                      at_subject=hparams.at_subject, whiten=hparams.subject_ridge if hparams.at_subject else None)


def training_whitening(model: nn.Module, tokenizer, editor: Editor, stats: StatsCache | None,
                       hparams: MendHParams | None = None) -> Inverses | None:
    """The inverses an editor trained under whitening needs (`reach.whitening`), else None."""
    if editor.spec.whiten is None:
        return None
    spec = (hparams or for_model(MendHParams, model)).stats
    return whitening(model, tokenizer, editor.spec.names, editor.spec.whiten, spec, stats, editor.spec.fingerprint)


@dataclass(frozen=True)
class Losses:
    edit_rows: torch.Tensor  # (B,) each row's mean target NLL on its paraphrase after the edit
    loc: torch.Tensor  # mean over rows of the per-token KL(original || edited) on the locality inputs
    hits: torch.Tensor  # (B,) 1.0 where the paraphrase yields every target token
    kept: torch.Tensor  # (B,) 1.0 where log P(locality answer) moved < 1 nat (NaN for a row without answer)

    @property
    def edit(self) -> torch.Tensor:
        """The edit loss: the rows' mean target NLL."""
        return self.edit_rows.mean()


def edit_losses(model: nn.Module, tokenizer, editor: Editor, records: Sequence[EditRecord],
                texts: Sequence[str], observe: bool, grad: bool, inverses: Inverses | None = None) -> Losses:
    """The objective's two terms for a batch; `texts` are the (possibly wrapped) edit inputs; `inverses`
    whiten the update (`training_whitening`; required for an editor trained under whitening)."""
    if editor.spec.whiten is not None and inverses is None:
        raise ValueError("this editor is trained under whitening: pass its inverses (training_whitening)")
    device = next(model.parameters()).device
    signals = edit_signals(model, tokenizer, editor, texts, [r.target for r in records], [r.subject for r in records])
    if observe:
        for name in editor.spec.names:
            editor.observe(name, signals.x[name], signals.delta[name], signals.mask)
    para = encode(tokenizer, [(r.paraphrase or r.prompt, r.target) for r in records], device)
    loc = encode(tokenizer, [(r.locality, r.locality_answer) for r in records], device)
    with torch.no_grad():
        base = F.log_softmax(model(input_ids=loc.input_ids, attention_mask=loc.attention_mask).logits.float(), -1)
    with torch.set_grad_enabled(grad):
        factors = editor_factors(editor, signals)
        factors = whitened(factors, inverses) if inverses is not None else factors
        with edited(model, factors):
            para_logits = model(input_ids=para.input_ids, attention_mask=para.attention_mask).logits
            loc_logits = model(input_ids=loc.input_ids, attention_mask=loc.attention_mask).logits
        after = F.log_softmax(loc_logits.float(), -1)  # (B, T, V)
        loc_kl = row_kl(base, after, locality_weights(loc))  # (B,)
        return Losses(row_nll(para_logits, para), loc_kl.mean(), row_hits(para_logits, para),
                      answer_kept(base, after.detach(), loc))


def locality_weights(loc: TokenBatch) -> torch.Tensor:
    """(B, T) where each row's KL counts: its answer's positions when it has one, else every real token."""
    weights = loc.attention_mask.float().clone()
    for b, pos in enumerate(loc.positions):
        if pos:
            weights[b] = 0.0
            weights[b, list(pos)] = 1.0
    return weights


def answer_kept(base: torch.Tensor, after: torch.Tensor, loc: TokenBatch, tolerance: float = 1.0) -> torch.Tensor:
    """(B,) 1.0 where log P(answer) (summed over its tokens, teacher-forced) moved by less than `tolerance`
    nats, as `kbchat bench` judges a neighbour; NaN for a row without answer. base, after: (B, T, V) log-probs."""
    out = []
    for b, (pos, ids) in enumerate(zip(loc.positions, loc.target_ids, strict=True)):
        if not pos:
            out.append(float("nan"))
            continue
        shift = (after[b, list(pos), list(ids)] - base[b, list(pos), list(ids)]).sum()
        out.append(float(shift.abs() < tolerance))
    return torch.tensor(out)


class TaskSampler:
    """Uniform over tasks, then over that task's records; a training wording per sampled edit."""

    def __init__(self, records: Sequence[EditRecord], tasks: Sequence[Task], instructions: bool) -> None:
        self.groups: dict[str, list[EditRecord]] = {}
        for r in records:
            self.groups.setdefault(r.task, []).append(r)
        if not self.groups:
            raise ValueError("no training records")
        self.names = sorted(self.groups)
        self.tasks = {n: find_task(tasks, n) for n in self.names} if instructions else {}

    def sample(self, n: int, generator: torch.Generator) -> tuple[list[EditRecord], list[str]]:
        """n records and their edit inputs (wrapped in an instruction for InstructEdit)."""
        records, texts = [], []
        for _ in range(n):
            name = self.names[int(torch.randint(len(self.names), (1,), generator=generator))]
            group = self.groups[name]
            record = group[int(torch.randint(len(group), (1,), generator=generator))]
            text = record.prompt
            if self.tasks:
                task = self.tasks[name]
                wording = int(torch.randint(len(task.training_wordings), (1,), generator=generator))
                text = wrap(task, wording, text)
            records.append(record)
            texts.append(text)
        return records, texts


def edit_inputs(records: Sequence[EditRecord], tasks: Sequence[Task], instructions: bool,
                wording: int = 0) -> list[str]:
    """Each record's edit input, behind its task's instruction number `wording` when `instructions`."""
    if not instructions:
        return [r.prompt for r in records]
    return [wrap(find_task(tasks, r.task), wording, r.prompt) for r in records]


def validate(model: nn.Module, tokenizer, editor: Editor, records: Sequence[EditRecord], config: TrainConfig,
             wording: int = 0, inverses: Inverses | None = None, per_record: bool = False) -> dict:
    """Mean edit loss, locality loss and success over `records` (statistics and weights untouched);
    with `per_record`, also each record's edit loss ("edit_rows", in order: for paired comparisons)."""
    edit, loc, hits, kept = [], [], [], []
    for start in range(0, len(records), config.batch_size):
        chunk = records[start : start + config.batch_size]
        texts = edit_inputs(chunk, config.tasks, config.instructions, wording)
        losses = edit_losses(model, tokenizer, editor, chunk, texts, observe=False, grad=False, inverses=inverses)
        edit.extend(losses.edit_rows.tolist())
        loc.append(float(losses.loc) * len(chunk))
        hits.extend(losses.hits.tolist())
        kept.extend(k for k in losses.kept.tolist() if k == k)  # NaN: no answer to judge
    n = len(records)
    out = {"edit": sum(edit) / n, "loc": sum(loc) / n, "success": sum(hits) / n}
    out = {**out, "kept": sum(kept) / len(kept)} if kept else out
    return {**out, "edit_rows": edit} if per_record else out


def objective(val: dict[str, float], config: TrainConfig) -> float:
    return config.c_edit * val["edit"] + config.c_loc * val["loc"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def make_optimizer(editor: Editor, config: TrainConfig) -> torch.optim.Adam:
    """Adam with two groups: the networks (lr) and the per-matrix log steps (alpha_lr)."""
    nets = [p for name, p in editor.named_parameters() if name != "log_alpha"]
    return torch.optim.Adam([{"params": nets, "lr": config.lr}, {"params": [editor.log_alpha], "lr": config.alpha_lr}])


def records_sha256(records: Sequence[EditRecord]) -> str:
    """A hash of the training data, recorded with the editor."""
    return hashlib.sha256(json.dumps([asdict(r) for r in records]).encode()).hexdigest()


def train(
    model: nn.Module,
    tokenizer,
    train_records: Sequence[EditRecord],
    val_records: Sequence[EditRecord],
    config: TrainConfig,
    progress: Callable[[TrainStatus], None] | None = None,
    out: Path = Path("editor.safetensors"),
    resume: bool = False,
    stats: StatsCache | None = None,
) -> TrainResult:
    """Train an editor for `model`; the best one (by validation objective) is written to `out`.
    `stats` keeps the second moments an editor trained under whitening (`at_subject`) needs.

    Deterministic for a seed. With `resume`, carries on from the state file beside `out` (ValueError
    if it is missing or was made for another model or editor shape). The model's weights, mode and
    requires_grad flags are unchanged afterwards.
    """
    started = time.monotonic()
    out = Path(out)
    model_id = model_fingerprint(model)
    spec = new_spec(model, config.hparams or for_model(MendHParams, model), config.kind, model_id, config.tasks)
    editor = Editor(spec, seed=config.seed).to(next(model.parameters()).device)
    optimizer = make_optimizer(editor, config)
    generator = torch.Generator().manual_seed(config.seed)
    val_set = list(val_records[: config.val_size])
    sampler = TaskSampler(train_records, config.tasks, config.instructions)
    about = {"config": asdict(config), "train_records": len(train_records),
             "train_tasks": dict(Counter(r.task for r in train_records)),  # a task absent here is held out
             "train_sha256": records_sha256(train_records), "val_records": len(val_set)}
    with eval_mode(model), frozen(model):
        inverses = training_whitening(model, tokenizer, editor, stats, config.hparams)
        state = _start(model, tokenizer, editor, optimizer, generator, (val_set, inverses), config, out, resume, about)
        for step in range(state["step"] + 1, config.steps + 1):
            records, texts = sampler.sample(config.batch_size, generator)
            losses = edit_losses(model, tokenizer, editor, records, texts, observe=True, grad=True,
                                 inverses=inverses)
            optimizer.zero_grad()
            (config.c_edit * losses.edit + config.c_loc * losses.loc).backward()
            torch.nn.utils.clip_grad_norm_(editor.parameters(), config.grad_clip)
            optimizer.step()
            state["step"] = step
            if step % config.val_every == 0 or step == config.steps:
                _checkpoint(model, tokenizer, editor, optimizer, generator, (val_set, inverses), config, out, state,
                            about)
            if progress is not None:
                progress(_status(state, config, float(losses.edit.detach()), float(losses.loc.detach())))
    best = state["history"][state["best_index"]]
    return TrainResult(out, best["step"], best, state["history"], time.monotonic() - started)


def _start(model: nn.Module, tokenizer, editor: Editor, optimizer: torch.optim.Optimizer,
           generator: torch.Generator, held_out: tuple[list[EditRecord], Inverses | None], config: TrainConfig,
           out: Path, resume: bool, about: dict) -> dict:
    """The training state: loaded from the state file (resume), or step 0 validated (and kept as the
    best so far, so that `out` always holds an editor no worse on validation than the untrained one)."""
    path = state_path(out)
    if resume:
        if not path.is_file():
            raise ValueError(f"nothing to resume: {path} does not exist")
        saved = read_spec(path)
        if saved != editor.spec:
            raise ValueError(f"{path.name} is for another model or editor shape "
                             f"(model {saved.fingerprint[:12]}…, this one {editor.spec.fingerprint[:12]}…)")
        return load_state(path, editor, optimizer, generator)
    val = validate(model, tokenizer, editor, held_out[0], config, inverses=held_out[1])
    save_editor(editor, out, {**about, "step": 0, "val": val})
    return {"step": 0, "history": [{"step": 0, **val}], "best_index": 0, "best": objective(val, config)}


def _checkpoint(model: nn.Module, tokenizer, editor: Editor, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, held_out: tuple[list[EditRecord], Inverses | None], config: TrainConfig,
                out: Path, state: dict, about: dict) -> None:
    """Validate; keep the editor in `out` if it is the best so far; save the resumable state."""
    val = validate(model, tokenizer, editor, held_out[0], config, inverses=held_out[1])
    state["history"].append({"step": state["step"], **val})
    score = objective(val, config)
    if score < state["best"]:
        state["best"], state["best_index"] = score, len(state["history"]) - 1
        save_editor(editor, out, {**about, "step": state["step"], "val": val})
    save_state(state_path(out), editor, optimizer, generator, state)


def _status(state: dict, config: TrainConfig, edit: float, loc: float) -> TrainStatus:
    last = state["history"][-1]
    return TrainStatus(state["step"], config.steps, edit, loc, last["edit"], last["loc"], last["success"],
                       state["history"][state["best_index"]]["step"], last.get("kept"))
