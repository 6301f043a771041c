"""Editor checkpoints: safetensors tensors with a JSON header in the metadata, tied to one model.

An editor file holds the networks, step sizes and normaliser statistics, with `spec` (architecture,
edited modules and shapes, rank, tasks, the model's fingerprint) and `about` (how it was trained)
in the header. A training-state file holds the same plus the optimiser, step, RNG and best
validation figure, so that `train(..., resume=True)` carries on exactly. Editors are found by the
model's fingerprint in a search path of files and directories, which always ends with `SHIPPED`: the
editors trained for the default model, shipped with the library (`editors/README.md` there).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from methods.mend.editor import Editor, EditorSpec

FORMAT = "mend-editor/1"
STATE_FORMAT = "mend-train-state/1"
SHIPPED = Path(__file__).resolve().parent / "editors"  # package data: `methods/mend/editors/*.safetensors`


def save_editor(editor: Editor, path: Path, about: dict[str, Any] | None = None) -> None:
    """Write the editor (atomically: a crash never leaves a half-written file under `path`)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in editor.state_dict().items()}
    header = {"format": FORMAT, "spec": editor.spec.to_json(), "about": json.dumps(about or {}, sort_keys=True)}
    _write(path, tensors, header)


def read_header(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_spec(path: Path) -> EditorSpec:
    """The spec of an editor or training-state file (ValueError if it is neither)."""
    try:
        header = read_header(path)
        if header.get("format") not in (FORMAT, STATE_FORMAT):
            raise ValueError(f"format {header.get('format')!r}")
        return EditorSpec.from_json(header["spec"])
    except Exception as exc:  # safetensors and json raise several types; all mean "not an editor"
        raise ValueError(f"{path} is not a MEND editor checkpoint: {exc}") from exc


def check_model(spec: EditorSpec, model_id: str, path: Path | str = "editor") -> None:
    """Refuse an editor trained for another model."""
    if spec.fingerprint != model_id:
        raise ValueError(f"{Path(path).name} was trained for model {spec.fingerprint[:12]}…, "
                         f"not for this model {model_id[:12]}…")


def load_editor(path: Path, model_id: str | None = None) -> Editor:
    """The editor in `path`; with `model_id` (methods.model_fingerprint), refused unless it matches."""
    spec = read_spec(path)
    if model_id is not None:
        check_model(spec, model_id, path)
    editor = Editor(spec)
    state = load_file(str(path))
    editor.load_state_dict({k: v for k, v in state.items() if not k.startswith("train.")})
    return editor.eval()


def find_editor(search: Iterable[Path | str], model_id: str, kind: str) -> Path | None:
    """The first editor file of `kind` for `model_id` among `search` (files, or directories of *.safetensors)."""
    for entry in search:
        entry = Path(entry)
        files = sorted(entry.glob("*.safetensors")) if entry.is_dir() else [entry]
        for path in files:
            try:
                spec = read_spec(path)
                if read_header(path)["format"] != FORMAT:
                    continue
            except (ValueError, OSError):
                continue
            if spec.kind == kind and spec.fingerprint == model_id:
                return path
    return None


def search_path(editors: Iterable[Path | str] | Path | str = ()) -> tuple[Path, ...]:
    """`editors` (one path or several, in order, duplicates dropped) followed by `SHIPPED` unless given."""
    entries = [editors] if isinstance(editors, (str, Path)) else list(editors)
    found: list[Path] = []
    for entry in [*map(Path, entries), SHIPPED]:
        if all(_key(entry) != _key(seen) for seen in found):
            found.append(entry)
    return tuple(found)


def _key(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:  # an unreadable entry is compared as written (and skipped by find_editor)
        return path


def state_path(out: Path) -> Path:
    """Where training keeps its resumable state beside the editor file `out`."""
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


def save_state(path: Path, editor: Editor, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               progress: dict[str, Any]) -> None:
    """Editor, Adam's moments, the sampler's RNG and `progress` (step, best figure, ...) in one file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in editor.state_dict().items()}
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"train.opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["train.rng"] = generator.get_state()
    header = {
        "format": STATE_FORMAT,
        "spec": editor.spec.to_json(),
        "groups": json.dumps(opt["param_groups"]),
        "progress": json.dumps(progress, sort_keys=True),
    }
    _write(path, tensors, header)


def load_state(path: Path, editor: Editor, optimizer: torch.optim.Optimizer,
               generator: torch.Generator) -> dict[str, Any]:
    """Restore what `save_state` wrote into the given objects; returns the saved `progress`."""
    header = read_header(path)
    tensors = load_file(str(path))
    editor.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("train.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("train.opt."):
            index, name = key.removeprefix("train.opt.").split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["groups"])})
    generator.set_state(tensors["train.rng"])
    return json.loads(header["progress"])


def _write(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
