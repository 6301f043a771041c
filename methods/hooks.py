"""Forward hooks, written once: record or edit the inputs/outputs of named modules during a pass.

`Trace` follows ROME's `nethook.TraceDict`: a context manager that removes every hook on exit, even
after an exception, and with `stop=True` ends the forward pass once every traced module has run (in whatever order `names` lists them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from methods.architecture import get_module

EditFn = Callable[[torch.Tensor, str], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; swallowed by `Trace`."""


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


class Trace:
    """Record (and optionally edit) what named modules see and produce during forward passes.

    `inputs[name]` is the module's first positional input, `outputs[name]` its (first) output, both
    as seen in the last pass. `edit_output(tensor, name) -> tensor` may replace the output.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        *,
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: EditFn | None = None,
        stop: bool = False,
        detach: bool = True,
    ) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        ran: set[str] = set()  # stop once every traced module has run, whatever their order in `names`
        for name in names:
            try:
                module = get_module(model, name)
            except Exception:
                self.close()  # no hook of this Trace outlives it, even when it is never entered
                raise

            def hook(_module, args, output, name=name):
                if retain_input:
                    x = args[0]
                    self.inputs[name] = x.detach() if detach else x
                if edit_output is not None:
                    output = _replace_first(output, edit_output(_first(output), name))
                if retain_output:
                    y = _first(output)
                    self.outputs[name] = y.detach() if detach else y
                ran.add(name)
                if stop and len(ran) == len(set(names)):
                    ran.clear()  # the next forward pass through this Trace starts afresh
                    raise StopForward
                return output

            self._handles.append(module.register_forward_hook(hook))

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is StopForward

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def added_output(model: nn.Module, additions: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """While inside, module `name`'s output becomes `output + additions[name](input)`.

    The one mechanism behind low-rank patches that act without touching the weights.
    """
    handles = []
    try:
        for name, fn in additions.items():
            module = get_module(model, name)

            def hook(_module, args, output, fn=fn):
                return _replace_first(output, _first(output) + fn(args[0]))

            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients inside (only the tensors being optimised get them); flags restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
