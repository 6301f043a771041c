"""A weight change kept in factored form: computed by a method, applied, reverted, serialised.

For a module whose weight is W (out, in), an update adds `left @ right.T` with left (out, r) and
right (in, r): a rank-one ROME edit is two vectors, a MEMIT batch of n edits is rank n. FT-L's change
is not low-rank and is stored dense (left = the full matrix, right = None).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from methods.architecture import get_module
from methods.hooks import added_output

FORMAT_VERSION = "1"


def weight_of(module: nn.Module) -> torch.Tensor:
    """The module's weight as an (out, in) view sharing storage (GPT-2's Conv1D stores it transposed)."""
    w = module.weight
    return w.T if type(module).__name__ == "Conv1D" else w


@dataclass(frozen=True)
class Update:
    """One module's change: `left @ right.T` (low-rank) or `left` itself when `right` is None (dense)."""

    module: str
    left: torch.Tensor  # (out, r), or (out, in) when dense
    right: torch.Tensor | None = None  # (in, r)

    def matrix(self) -> torch.Tensor:
        """The dense (out, in) change, in float32."""
        return self.left.float() if self.right is None else self.left.float() @ self.right.float().T

    @property
    def rank(self) -> int:
        return min(self.left.shape) if self.right is None else self.left.shape[1]


@dataclass
class Applied:
    """What `Delta.apply` replaced, so that `undo()` restores the weights bit for bit."""

    model: nn.Module
    saved: dict[str, torch.Tensor]

    @torch.no_grad()
    def undo(self) -> None:
        for name, original in self.saved.items():
            weight_of(get_module(self.model, name)).copy_(original)


@dataclass(frozen=True)
class Delta:
    """The result of an edit method. Computing it never changes the model; `apply` does.

    `extras` carries named tensors a later computation may need (AlphaEdit keeps each edit's keys
    to protect it from later edits); `meta` is JSON-able (method, requests, hyperparameters, losses).
    """

    method: str
    updates: tuple[Update, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(u.module for u in self.updates))

    @torch.no_grad()
    def apply(self, model: nn.Module) -> Applied:
        """Add the change to the model's weights; the returned handle undoes it exactly."""
        saved = {name: weight_of(get_module(model, name)).detach().clone() for name in self.modules}
        for u in self.updates:
            w = weight_of(get_module(model, u.module))
            w.add_(u.matrix().to(device=w.device, dtype=w.dtype))
        return Applied(model, saved)

    @torch.no_grad()
    def revert(self, model: nn.Module) -> None:
        """Subtract the change (exact only up to float rounding; use `Applied.undo` for bit-exactness)."""
        for u in reversed(self.updates):
            w = weight_of(get_module(model, u.module))
            w.sub_(u.matrix().to(device=w.device, dtype=w.dtype))

    @contextmanager
    def patched(self, model: nn.Module, scale: float = 1.0) -> Iterator[None]:
        """Act as if applied, through forward hooks, leaving the weights untouched."""
        with patched(model, [self], scale=scale):
            yield

    def scaled(self, factor: float) -> Delta:
        """The same change `factor` times as large (its low-rank factors' left side scaled), with
        `factor` recorded in `meta["scale"]`."""
        updates = tuple(replace(u, left=u.left * factor) for u in self.updates)
        return Delta(self.method, updates, {**self.meta, "scale": factor}, dict(self.extras))

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        index = []
        for i, u in enumerate(self.updates):
            tensors[f"u{i}.left"] = u.left.detach().cpu().contiguous()
            if u.right is not None:
                tensors[f"u{i}.right"] = u.right.detach().cpu().contiguous()
            index.append(u.module)
        for name, t in self.extras.items():
            tensors[f"x.{name}"] = t.detach().cpu().contiguous()
        header = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "modules": json.dumps(index),
            "meta": json.dumps(self.meta, sort_keys=True),
        }
        return _sorted_header(st_save(tensors, metadata=header))

    @classmethod
    def from_bytes(cls, data: bytes) -> Delta:
        """Inverse of `to_bytes`. Raises ValueError on data that is not a delta."""
        try:
            tensors = st_load(data)
            header = _read_header(data)
            modules = json.loads(header["modules"])
            meta = json.loads(header["meta"])
            method = header["method"]
            updates = tuple(
                Update(name, tensors[f"u{i}.left"], tensors.get(f"u{i}.right")) for i, name in enumerate(modules)
            )
        except Exception as exc:  # safetensors raises several types; all mean the same thing here
            raise ValueError(f"not a serialised delta: {exc}") from exc
        extras = {k[2:]: v for k, v in tensors.items() if k.startswith("x.")}
        return cls(method=method, updates=updates, meta=meta, extras=extras)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


def load_delta(data: bytes) -> Delta:
    return Delta.from_bytes(data)


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors bytes with the JSON header's keys sorted.

    safetensors writes the metadata from a hash map, in an order that changes from run to run; sorted,
    equal deltas give equal bytes and `sha256` is a fingerprint. Tensor offsets are relative to the
    end of the header, so only the header changes; it is space-padded to 8 bytes as safetensors does.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def _read_header(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])["__metadata__"]


@contextmanager
def patched(model: nn.Module, deltas: Sequence[Delta], scale: float = 1.0) -> Iterator[None]:
    """While inside, the model behaves as base weights + `deltas`, computed on the fly by hooks.

    Used for memory edits that act inside the model only for in-scope questions, and by methods
    that must see earlier updates (MEMIT's lower layers) without writing them into the weights.
    """
    by_module: dict[str, list[Update]] = {}
    for d in deltas:
        for u in d.updates:
            by_module.setdefault(u.module, []).append(u)

    def make(updates: list[Update], module: nn.Module):
        w = weight_of(module)
        lows = [u for u in updates if u.right is not None]
        dense = [u for u in updates if u.right is None]
        # Concatenate the factors once: x @ R @ L.T costs (in + out) * total_rank per token.
        left = torch.cat([u.left for u in lows], 1).to(w.device, w.dtype) * scale if lows else None
        right = torch.cat([u.right for u in lows], 1).to(w.device, w.dtype) if lows else None
        full = sum(u.left for u in dense).to(w.device, w.dtype) * scale if dense else None

        def add(x: torch.Tensor) -> torch.Tensor:
            # The factors stay in the weights' dtype at creation; a working copy in another dtype
            # (methods/precision.py) carries this hook too, so meet the input where it is.
            out = 0
            if left is not None:
                out = (x @ right.to(x.dtype)) @ left.to(x.dtype).T  # (..., in) -> (..., r) -> (..., out)
            if full is not None:
                out = out + x @ full.to(x.dtype).T
            return out

        return add

    additions = {name: make(us, get_module(model, name)) for name, us in by_module.items()}
    with added_output(model, additions):
        yield
