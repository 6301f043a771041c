"""MEND's edit: one forward/backward pass on the request, then the editor, giving a factored `Delta`.

For each edited matrix the loss gradient is sum_t delta_t x_t^T over the positions that predict the
target's tokens (the direct path; earlier positions reach the loss only through attention); the
editor maps each pair to (x~, delta~) and the update is -alpha * sum_t delta~_t x~_t^T, stored as
`Update(module, left=-alpha * delta~ (out, r), right=x~ (in, r))` with r = the target's tokens.
An editor trained `at_subject` takes its pairs at the subject's last token instead (in the
locate-then-edit layers, where the subject is read), each input side whitened as ROME's key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from methods.architecture import architecture_of, get_module
from methods.delta import Delta, Update, weight_of
from methods.gradients import Taps
from methods.hooks import frozen
from methods.hparams import MendHParams, for_model
from methods.mend.batch import TokenBatch, encode, gather_rows, position_mask, row_nll, subject_sites
from methods.mend.checkpoint import find_editor, load_editor, search_path
from methods.mend.editor import Editor
from methods.mend.instruct import find_task, guess_task
from methods.mend.instruct import instruction as instruction_text
from methods.mend.reach import Factors, reshaped
from methods.progress import ProgressFn, silent
from methods.requests import EditRequest
from methods.stats import StatsCache, model_fingerprint


@dataclass(frozen=True)
class Signals:
    """What one forward/backward pass on a batch of edit inputs yields, per edited module."""

    x: dict[str, torch.Tensor]  # (B, R, in) inputs at the target-predicting positions, zero-padded
    delta: dict[str, torch.Tensor]  # (B, R, out) gradients of each row's mean target NLL at the outputs
    mask: torch.Tensor  # (B, R) 1.0 on real positions
    nll: torch.Tensor  # (B,) each row's mean target NLL before the edit


def capture(model: nn.Module, batch: TokenBatch, names: Sequence[str],
            sites: Sequence[Sequence[int]] | None = None) -> Signals:
    """One forward/backward pass (parameters frozen, weights untouched) collecting (x, delta) per module
    at each row's `sites` (default: the positions that predict its target)."""
    sites = batch.positions if sites is None else sites
    with frozen(model), Taps(model, names) as taps:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        nll = row_nll(logits, batch)  # (B,)
        grads = taps.gradients(nll.sum())  # rows are independent: row b's gradient is its own loss's
    width = max(len(p) for p in sites)
    xs = {n: gather_rows(taps.inputs[n], sites, width).float() for n in names}
    deltas = {n: gather_rows(grads[n], sites, width).float() for n in names}
    return Signals(xs, deltas, position_mask(sites, width, batch.input_ids.device), nll.detach())


def edit_signals(model: nn.Module, tokenizer, editor: Editor, texts: Sequence[str], targets: Sequence[str],
                 subjects: Sequence[str]) -> Signals:
    """`capture` on the edit inputs `texts`, at the sites `editor` was trained on (the target's positions,
    or the subject's last token for an editor `at_subject`)."""
    device = next(model.parameters()).device
    batch = encode(tokenizer, list(zip(texts, targets, strict=True)), device)
    sites = subject_sites(tokenizer, texts, subjects) if editor.spec.at_subject else None
    return capture(model, batch, editor.spec.names, sites)


def editor_factors(editor: Editor, signals: Signals) -> Factors:
    """The editor's per-edit factors for every module (differentiable in the editor's parameters)."""
    return {n: editor.factors(n, signals.x[n], signals.delta[n], signals.mask) for n in editor.spec.names}


def check_fits(editor: Editor, model: nn.Module) -> None:
    """The editor's matrices exist in `model` with the shapes it was trained on (ValueError if not)."""
    for name, out, inp in editor.spec.modules:
        shape = tuple(weight_of(get_module(model, name)).shape)
        if shape != (out, inp):
            raise ValueError(f"editor expects {name} to be {out}x{inp}, the model's is {shape[0]}x{shape[1]}")


class EditorNotFound(LookupError):
    """No trained editor of the asked kind exists for this model; the message is one line naming the
    method, the model and the command that trains one."""


METHOD_NAMES = {"mend": "MEND", "instructedit": "InstructEdit"}


def model_label(model: nn.Module, model_id: str) -> str:
    """The model as a message names it: its config's name (last path part), with the fingerprint's
    first 12 characters; only the fingerprint when the config has no name. Always one line."""
    config = getattr(model, "config", None)
    raw = getattr(config, "name_or_path", None) or getattr(config, "name", None) or ""
    name = Path(" ".join(str(raw).split())).name if isinstance(raw, (str, Path)) else ""
    return f"{name}, fingerprint {model_id[:12]}…" if name else f"fingerprint {model_id[:12]}…"


def not_found_message(model: nn.Module, kind: str, model_id: str) -> str:
    """One line: which method, that no editor exists for this model, and the command that trains one."""
    return (f"no {METHOD_NAMES.get(kind, kind)} editor for this model ({model_label(model, model_id)}); "
            f"train one with `kbchat train-editor --method {kind}`")


def locate_editor(model: nn.Module, kind: str, editors: Sequence[Path | str] | Path | str,
                  model_id: str | None) -> Path:
    """The first editor file of `kind` for this model's fingerprint in `editors`, then in `SHIPPED`
    (EditorNotFound, whose message says how to train one, if there is none)."""
    model_id = model_id or model_fingerprint(model)
    path = find_editor(search_path(editors), model_id, kind)
    if path is None:
        raise EditorNotFound(not_found_message(model, kind, model_id))
    return path


class LoadedEditors:
    """Editors loaded once and kept, for an app that edits many times with one model (loading one takes
    about a second, as long as the edit itself). Keyed by kind and model; the file found is checked on
    every `get`, and reloaded when it is another file or was rewritten (its modification time)."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[tuple[Path, int], Editor]] = {}

    def get(self, model: nn.Module, kind: str, editors: Sequence[Path | str] | Path | str = (),
            model_id: str | None = None) -> Editor:
        model_id = model_id or model_fingerprint(model)
        path = locate_editor(model, kind, editors, model_id)
        stamp = (path.resolve(), path.stat().st_mtime_ns)
        kept = self._kept.get((kind, model_id))
        if kept is None or kept[0] != stamp:
            kept = (stamp, load_editor(path, model_id).to(next(model.parameters()).device))
            self._kept[(kind, model_id)] = kept
        return kept[1]


def resolve_editor(model: nn.Module, kind: str, editor: Editor | None,
                   editors: Sequence[Path | str] | Path | str, model_id: str | None) -> Editor:
    """The explicit editor, else the one `locate_editor` finds, loaded; ValueError if it does not fit."""
    if editor is None:
        model_id = model_id or model_fingerprint(model)
        editor = load_editor(locate_editor(model, kind, editors, model_id), model_id)
        editor = editor.to(next(model.parameters()).device)
    check_fits(editor, model)
    return editor


def compute(
    model: nn.Module,
    tokenizer,
    requests: Sequence[EditRequest],
    hparams: MendHParams | None = None,
    *,
    editor: Editor | None = None,
    editors: Sequence[Path | str] | Path | str = (),
    model_id: str | None = None,
    instruction: str | None = None,
    task: str | None = None,
    wording: int = 0,
    kind: str = "mend",
    stats: StatsCache | None = None,
    progress: ProgressFn = silent,
    **_unused,
) -> Delta:
    """The delta that writes `requests` (one batched forward/backward pass, then the editor).

    `editor` is used as given; else the first editor file of `kind` whose fingerprint is `model_id`
    (the *unedited* model's `methods.model_fingerprint`; computed from `model` when omitted) is
    loaded from `editors` (files or directories, searched in order), then from the editors shipped
    with the library (`methods.mend.checkpoint.SHIPPED`, for the default model); none found is
    `EditorNotFound`, whose one-line message says how to train one.
    `instruction` is put on a line before each prompt; for InstructEdit it defaults to `task`'s
    wording number `wording` (the task guessed from the prompt when not named). The editor's update
    then goes through `reach` (whitening, the step search on each request's own prompt, without the
    instruction); `stats` keeps the second moments whitening needs (computed once per cache). Updates
    of all requests are concatenated: rank = total target tokens (subject occurrences for an editor
    `at_subject`, whose update is always whitened as in its training). The model is left unchanged.
    """
    architecture_of(model)  # UnsupportedModel before anything else
    hparams = hparams or for_model(MendHParams, model)
    editor = resolve_editor(model, kind, editor, editors, model_id)
    if instruction is None and editor.spec.tasks:
        instruction = _task_instruction(editor, requests, task, wording)
    texts = [f"{instruction}\n{r.text}" if instruction else r.text for r in requests]
    progress("gradient", 0, 1)
    signals = edit_signals(model, tokenizer, editor, texts, [r.target for r in requests], [r.subject for r in requests])
    with torch.no_grad():
        factors = editor_factors(editor, signals)
    progress("gradient", 1, 1)
    factors, found = reshaped(model, tokenizer, requests, factors, hparams, stats, model_id, editor.spec.whiten,
                              editor.spec.at_subject)
    keep = signals.mask.reshape(-1) > 0  # the sites' rows: one rank-one term each
    updates = [Update(name, (hparams.scale * _flat(left, keep)).cpu().contiguous(), _flat(right, keep).cpu().contiguous())
               for name, (left, right) in factors.items()]
    meta = {
        "method": kind,
        "requests": [vars(r) for r in requests],
        "instruction": instruction,
        "editor": {"kind": editor.spec.kind, "fingerprint": editor.spec.fingerprint, "rank": editor.spec.rank},
        "nll_before": [float(v) for v in signals.nll],
        "whiten": editor.spec.whiten if editor.spec.whiten is not None else hparams.whiten,
        "at_subject": editor.spec.at_subject,
        "steps": [float(v) for v in found.steps],
        "reached": [bool(v) for v in found.reached],  # the target beats its rival on the prompt, at that step
        "module": list(found.module) or [None] * len(requests),  # the one module kept, when narrowed
    }
    return Delta(kind, tuple(updates), meta)


def _task_instruction(editor: Editor, requests: Sequence[EditRequest], task: str | None, wording: int) -> str:
    """The instruction of `task` (guessed from the first prompt when not named), its `wording`-th form."""
    chosen = find_task(editor.spec.tasks, task) if task else None
    chosen = chosen or guess_task(editor.spec.tasks, requests[0].text, chat_template=False)
    return instruction_text(chosen, wording)


def _flat(factor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, d, T) per-token factors -> (d, total r): the kept tokens' columns, request by request."""
    return factor.transpose(1, 2).reshape(-1, factor.shape[1])[keep].T


def compute_instructedit(model: nn.Module, tokenizer, requests: Sequence[EditRequest],
                         hparams: MendHParams | None = None, **options) -> Delta:
    """`compute` with an InstructEdit editor (see there for `task`, `wording`, `instruction`)."""
    return compute(model, tokenizer, requests, hparams, **{**options, "kind": "instructedit"})
