"""Deltas that act inside the model only when selected: in-model memory edits (GRACE/MELO style).

Hooks are installed once per touched module; which deltas they add is read from a context variable,
so concurrent generations on different threads can each select their own in-scope edits while the
weights stay untouched.
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
        self._selected: ContextVar[tuple[Hashable, ...]] = ContextVar(f"scoped-{id(self)}", default=())

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
        self._deltas.pop(key, None)
        still_used = {name for d in self._deltas.values() for name in d.modules}
        for name in list(self._handles):
            if name not in still_used:
                self._handles.pop(name).remove()

    @contextmanager
    def select(self, keys: Iterable[Hashable]) -> Iterator[None]:
        """Inside, the selected deltas (unknown keys ignored) act on this thread's forward passes."""
        token = self._selected.set(tuple(k for k in keys if k in self._deltas))
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
            keys = self._selected.get()
            if not keys:
                return output
            x = args[0]
            w = weight_of(module)
            extra = 0
            for key in keys:
                for u in self._deltas[key].updates:
                    if u.module != name:
                        continue
                    left = u.left.to(w.device, x.dtype)
                    if u.right is None:
                        extra = extra + x @ left.T
                    else:
                        extra = extra + (x @ u.right.to(w.device, x.dtype)) @ left.T  # (..., r) -> (..., out)
            return output + extra if isinstance(extra, torch.Tensor) else output

        return hook
