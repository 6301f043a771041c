"""Weight deltas as a PEFT LoRA adapter: what serving engines (vLLM, TGI, llama.cpp after conversion)
load on top of the unchanged base model, and unload to revert.

LoRA adds `scaling * B @ A` to a module's (out, in) weight, with A = lora_A (r, in), B = lora_B (out, r)
and scaling = lora_alpha / r. A factored update adds `left @ right.T`, so per module, the factors of
every update of every delta are concatenated: B = [left_1 | left_2 | ...], A = [right_1 | right_2 | ...]^T,
a rank that is the sum of the updates' ranks. One rank serves the whole adapter (no `rank_pattern`,
which not every engine reads): the largest module's, at least `min_rank` (8, the smallest rank an
engine accepts); smaller modules are padded with zero columns/rows, which add nothing. lora_alpha = r,
so the scale is exactly 1.

A dense update (right None: FT-L's, whose Adam steps are not low-rank) is factored by an SVD in
float64, keeping every singular value above float32 rounding: the product is the matrix to float
tolerance, at the matrix's numerical rank (for FT-L usually full: min(out, in)). Engines cap the rank
they load (vLLM's --max-lora-rank), so `max_rank` refuses an adapter past a limit, naming the modules.

GPT-2's Conv1D stores its weight as (in, out); `Update` is always in (out, in) terms (see
`delta.weight_of`), and so are lora_A/lora_B, whose forward pass x -> A -> B is the same for both layer
types. PEFT's `fan_in_fan_out` (set here for Conv1D targets) only tells it to transpose when merging.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from methods.architecture import get_module
from methods.delta import Delta, Update, weight_of

MIN_RANK = 8
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


class AdapterError(ValueError):
    """The deltas cannot be written as the adapter asked for (nothing to write, rank over a limit)."""


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA adapter: `config` is adapter_config.json, `tensors` adapter_model.safetensors."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    ranks: dict[str, int]  # per module: the summed rank before padding

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(self.config["target_modules"])

    def save(self, folder: str | Path) -> Path:
        """Write adapter_config.json and adapter_model.safetensors into `folder` (created if need be)."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(target / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        (target / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        return target


def factor_dense(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(left (out, k), right (in, k)) with left @ right.T == matrix to float32 tolerance; k its numerical rank."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    tol = s.max() * max(matrix.shape) * torch.finfo(torch.float32).eps if s.numel() else 0.0
    k = int((s > tol).sum())
    root = s[:k].sqrt()
    return (u[:, :k] * root).float(), (vh[:k].T * root).float()


def _factors(u: Update) -> tuple[torch.Tensor, torch.Tensor]:
    if u.right is None:
        return factor_dense(u.left)
    return u.left.float(), u.right.float()


def to_lora(
    deltas: Sequence[Delta],
    model: nn.Module,
    *,
    base_model: str | None = None,
    min_rank: int = MIN_RANK,
    max_rank: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> LoraAdapter:
    """The adapter that adds all `deltas` (in order; addition commutes) to `model`'s base weights.

    `model` gives each module's shape and layer type (Conv1D or Linear); its weights are not read.
    Raises AdapterError when there is no update, or when a module needs a rank above `max_rank`.
    """
    by_module: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for delta in deltas:
        for u in delta.updates:
            by_module.setdefault(u.module, []).append(_factors(u))
    if not by_module:
        raise AdapterError("no weight edits to export as an adapter (memory edits live in the ledger, not the weights)")
    ranks = {name: sum(left.shape[1] for left, _ in parts) for name, parts in by_module.items()}
    if max_rank is not None and (over := {n: r for n, r in ranks.items() if r > max_rank}):
        raise AdapterError(f"the adapter would need rank {max(over.values())} > {max_rank} on "
                           f"{', '.join(sorted(over))}; export a full checkpoint instead")
    r = max(min_rank, *ranks.values())
    tensors: dict[str, torch.Tensor] = {}
    conv1d = set()
    for name, parts in by_module.items():
        module = get_module(model, name)
        if type(module).__name__ == "Conv1D":
            conv1d.add(name)
        a, b = _stacked(name, parts, weight_of(module).shape, r)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = a.to(dtype)
        tensors[f"{PREFIX}{name}.lora_B.weight"] = b.to(dtype)
    if conv1d and conv1d != set(by_module):
        raise AdapterError("the edited modules mix Conv1D and Linear layers; one adapter cannot say both")
    return LoraAdapter(_peft_config(r, sorted(by_module), base_model, fan_in_fan_out=bool(conv1d)), tensors, ranks)


def _stacked(name: str, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], shape: tuple[int, int],
             r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA A (r, in) and B (out, r) holding every (left (out, k), right (in, k)) factor pair side by side,
    zero-padded to rank `r` (so B @ A is the sum of left @ right.T)."""
    out_features, in_features = shape
    b = torch.zeros(out_features, r, dtype=torch.float32)
    a = torch.zeros(r, in_features, dtype=torch.float32)
    at = 0
    for left, right in parts:
        if left.shape[0] != out_features or right.shape[0] != in_features:
            raise AdapterError(f"an update of {name} is {left.shape[0]}x{right.shape[0]}, the module "
                               f"{out_features}x{in_features}: the delta is for another model")
        k = left.shape[1]
        b[:, at : at + k] = left
        a[at : at + k] = right.T
        at += k
    return a, b


def _peft_config(r: int, modules: list[str], base_model: str | None, fan_in_fan_out: bool) -> dict[str, Any]:
    """PEFT's adapter_config.json for a plain LoRA of rank `r` with scaling 1."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": r,  # scaling = alpha / r = 1
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": modules,
        "fan_in_fan_out": fan_in_fan_out,  # Conv1D stores (in, out): PEFT transposes when merging
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_lora(deltas: Sequence[Delta], model: nn.Module, folder: str | Path, **options: Any) -> LoraAdapter:
    """`to_lora(deltas, model, **options)` written into `folder`; returns the adapter."""
    adapter = to_lora(deltas, model, **options)
    adapter.save(folder)
    return adapter
