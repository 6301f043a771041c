"""Deltas that act inside the model only when selected: in-model memory edits (GRACE/MELO style).

Hooks are installed once per touched module; which deltas they add is read from a context variable,
so concurrent generations on different threads can each select their own in-scope edits while the
weights stay untouched. A selection holds the deltas themselves, not their keys: removing a delta
while a generation that selected it is running leaves that generation as it began (it keeps the
delta to its end), and hooks stay installed until `close`, so no forward pass finds one missing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from methods.architecture import get_module
from methods.delta import Delta, weight_of


class ScopedDeltas:
    """A set of keyed deltas attached to `model`; each acts only inside `select(keys)` on that thread."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._deltas: dict[Hashable, Delta] = {}
        self._handles: dict[str, object] = {}
        self._selected: ContextVar[tuple[Delta, ...]] = ContextVar(f"scoped-{id(self)}", default=())

    def __contains__(self, key: Hashable) -> bool:
        return key in self._deltas

    def __len__(self) -> int:
        return len(self._deltas)

    def add(self, key: Hashable, delta: Delta) -> None:
        self._deltas[key] = delta
        for name in delta.modules:
            if name not in self._handles:
                self._handles[name] = get_module(self.model, name).register_forward_hook(self._hook(name))

    def remove(self, key: Hashable) -> None:
        """Forget `key`; selections already made keep its delta until they end."""
        self._deltas.pop(key, None)

    @contextmanager
    def select(self, keys: Iterable[Hashable]) -> Iterator[None]:
        """Inside, the selected deltas (unknown keys ignored) act on this thread's forward passes."""
        deltas = self._deltas  # one read of the table: a concurrent add/remove swaps entries, not this
        token = self._selected.set(tuple(d for k in keys if (d := deltas.get(k)) is not None))
        try:
            yield
        finally:
            self._selected.reset(token)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._deltas.clear()

    def _hook(self, name: str):
        module = get_module(self.model, name)

        def hook(_module, args, output):
            deltas = self._selected.get()
            if not deltas:
                return output
            x = args[0]
            w = weight_of(module)
            extra = 0
            for delta in deltas:
                for u in delta.updates:
                    if u.module != name:
                        continue
                    left = u.left.to(w.device, x.dtype)
                    if u.right is None:
                        extra = extra + x @ left.T
                    else:
                        extra = extra + (x @ u.right.to(w.device, x.dtype)) @ left.T  # (..., r) -> (..., out)
            return output + extra if isinstance(extra, torch.Tensor) else output

        return hook
