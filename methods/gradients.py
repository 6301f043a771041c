"""Gradients at module outputs and what the modules received, from one forward/backward pass.

A weight's gradient is sum_t delta_t x_t^T, with x_t the module's input and delta_t the gradient at
its output. `Taps` adds a zero tensor that requires grad to each named module's output (through the
shared `Trace`), so `torch.autograd.grad` gives every delta at once, with the model's parameters
frozen and nothing else touched. MEND's editor and KN's attribution both start from these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from methods.hooks import Trace

OutputFn = Callable[[torch.Tensor, str], torch.Tensor]


class Taps:
    """Inside `with Taps(model, names) as taps:` run a forward pass, then `taps.gradients(loss)`.

    `inputs[name]` is what the module received (detached), `gradients(loss)[name]` dL/d(output),
    both (B, T, features) of the last pass. `transform(output, name)` may change an output first
    (KN scales it); the gradient is taken at the transformed output.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], transform: OutputFn | None = None) -> None:
        self.names = list(names)
        self.transform = transform
        self.leaves: dict[str, torch.Tensor] = {}
        self._trace = Trace(model, self.names, retain_input=True, retain_output=False, edit_output=self._tap)

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return self._trace.inputs

    def _tap(self, output: torch.Tensor, name: str) -> torch.Tensor:
        if self.transform is not None:
            output = self.transform(output, name)
        leaf = torch.zeros_like(output, requires_grad=True)  # (B, T, out): d(output + leaf)/d leaf = I
        self.leaves[name] = leaf
        return output + leaf

    def gradients(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: (B, T, out) dL/d(output)} for the last forward pass."""
        missing = [n for n in self.names if n not in self.leaves]
        if missing:
            raise RuntimeError(f"no forward pass reached {missing}")
        grads = torch.autograd.grad(loss, [self.leaves[n] for n in self.names], allow_unused=True)
        return {
            n: g if g is not None else torch.zeros_like(self.leaves[n])
            for n, g in zip(self.names, grads, strict=True)
        }

    def __enter__(self) -> Taps:
        self._trace.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._trace.__exit__(exc_type, exc, tb)
