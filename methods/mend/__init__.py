"""MEND (Mitchell et al. 2022) and InstructEdit (Zhang et al. 2024): a trained editor network turns an
edit's gradient into a low-rank weight update in one forward/backward pass.

    editor = load_editor(path, model_id=methods.model_fingerprint(model))
    delta = compute(model, tokenizer, [EditRequest(...)], editor=editor)
    delta = compute(model, tokenizer, [EditRequest(...)])  # an editor of `editors=`, else a shipped one
    shelf = LoadedEditors(); compute(..., editor=shelf.get(model, "mend", editors))  # loaded once, kept
    train(model, tokenizer, train_records, val_records, TrainConfig(), progress, out=Path("mend.safetensors"))
"""

from methods.mend.checkpoint import SHIPPED, find_editor, load_editor, read_spec, save_editor, state_path
from methods.mend.compute import EditorNotFound, LoadedEditors, compute, compute_instructedit
from methods.mend.editor import Editor, EditorSpec
from methods.mend.instruct import DEFAULT_TASKS, Task, instruction, wrap
from methods.mend.training import EditRecord, TrainConfig, TrainResult, TrainStatus, train

__all__ = [
    "DEFAULT_TASKS", "SHIPPED", "EditRecord", "Editor", "EditorNotFound", "EditorSpec", "LoadedEditors", "Task", "TrainConfig", "TrainResult", "TrainStatus",
    "compute", "compute_instructedit", "find_editor", "instruction", "load_editor", "read_spec", "save_editor",
    "state_path", "train", "wrap",
]
