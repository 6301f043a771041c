"""The running weights as "base + active deltas, in order": applying, rebuilding and fingerprinting.

Reverting rebuilds the touched modules from saved base copies and re-applies the remaining deltas in
ledger order: the same arithmetic as a fresh start, so the result is bit for bit what a restart would
load (and reverting the newest edit gives back exactly the weights before it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from methods import Delta, model_fingerprint
from methods.architecture import get_module
from methods.delta import weight_of


class WeightState:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._base: dict[str, torch.Tensor] = {}  # module -> its weight before any delta (CPU copy)

    def _save_base(self, delta: Delta) -> None:
        for name in delta.modules:
            if name not in self._base:
                self._base[name] = weight_of(get_module(self.model, name)).detach().to("cpu", copy=True)

    def apply(self, delta: Delta):
        """Apply on top of the current weights; returns the handle that undoes it exactly."""
        self._save_base(delta)
        return delta.apply(self.model)

    @torch.no_grad()
    def rebuild(self, deltas: Sequence[Delta]) -> None:
        """Weights := base + `deltas` applied in order (for every module any delta ever touched)."""
        for d in deltas:
            self._save_base(d)
        for name, base in self._base.items():
            w = weight_of(get_module(self.model, name))
            w.copy_(base.to(w.device))
        for d in deltas:
            d.apply(self.model)

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)
