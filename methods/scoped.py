"""Deltas that act inside the model only when selected: in-model memory edits (GRACE/MELO style).

Hooks are installed once per touched module; which deltas they add is read from a context variable,
so concurrent generations on different threads can each select their own in-scope edits while the
weights stay untouched; `select_rows` gives each row of a batch its own selection (a patched and an
unpatched answer decoded side by side in one pass). A selection holds the deltas themselves, not their
keys: removing a delta while a generation that selected it is running leaves that generation as it
began (it keeps the delta to its end), and hooks stay installed until `close`, so no forward pass
finds one missing.

Where a selected delta acts is its *positions* policy:

- "prompt" (the default): only on a forward pass that starts with an empty KV cache, i.e. the input;
  never on tokens generated after it. The edit still reaches the answer through attention to the
  patched input positions, while a generated mention of the subject (whose key the delta matches) is
  not itself patched;
- "all": every position of every pass, as if the delta were in the weights (an audit's negation of a
  weight edit must cancel it exactly).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from methods.architecture import get_module
from methods.delta import Delta, weight_of

POLICIES = ("prompt", "all")


class ScopedDeltas:
    """A set of keyed deltas attached to `model`; each acts only inside `select(keys)` on that thread."""

    def __init__(self, model: nn.Module, positions: str = "prompt") -> None:
        _check_policy(positions)
        self.model = model
        self.positions = positions  # the policy of deltas added without one
        self._deltas: dict[Hashable, tuple[Delta, str]] = {}
        self._handles: dict[str, object] = {}
        # (delta, policy, rows): rows None for every batch row, else a 0/1 weight per row
        self._selected: ContextVar[tuple[tuple[Delta, str, tuple[float, ...] | None], ...]] = ContextVar(
            f"scoped-{id(self)}", default=())
        self._offset: ContextVar[int] = ContextVar(f"scoped-offset-{id(self)}", default=0)
        self._pass_hook = model.register_forward_pre_hook(self._offset_hook(), with_kwargs=True)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._deltas

    def __len__(self) -> int:
        return len(self._deltas)

    def add(self, key: Hashable, delta: Delta, positions: str | None = None) -> None:
        """Attach `delta` under `key`, acting where `positions` (default: this table's policy) says."""
        policy = positions or self.positions
        _check_policy(policy)
        self._deltas[key] = (delta, policy)
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
        token = self._selected.set(tuple((*d, None) for k in keys if (d := deltas.get(k)) is not None))
        try:
            yield
        finally:
            self._selected.reset(token)

    @contextmanager
    def select_rows(self, rows: Sequence[Iterable[Hashable]]) -> Iterator[None]:
        """Inside, batch row i of this thread's forward passes gets the deltas of `rows[i]` (unknown keys
        ignored); every pass must then have len(rows) rows."""
        deltas = self._deltas
        chosen: dict[Hashable, list[float]] = {}
        for i, keys in enumerate(rows):
            for k in keys:
                if k in deltas:
                    chosen.setdefault(k, [0.0] * len(rows))[i] = 1.0
        token = self._selected.set(tuple((*deltas[k], tuple(w)) for k, w in chosen.items()))
        try:
            yield
        finally:
            self._selected.reset(token)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._deltas.clear()
        self._pass_hook.remove()

    def _offset_hook(self):
        def pre_hook(_model, _args, kwargs):
            """Before each pass: how many positions precede it (the KV cache's length)."""
            if self._selected.get():
                self._offset.set(_past_length(kwargs.get("cache", kwargs.get("past_key_values"))))

        return pre_hook

    def _hook(self, name: str):
        module = get_module(self.model, name)

        def hook(_module, args, output):
            selected = self._selected.get()
            if not selected:
                return output
            on_input = self._offset.get() == 0
            x = args[0]  # (..., T, in)
            w = weight_of(module)
            extra = 0
            for delta, policy, rows in selected:
                if policy == "prompt" and not on_input:
                    continue
                for u in delta.updates:
                    if u.module != name:
                        continue
                    left = u.left.to(w.device, x.dtype)
                    if u.right is None:
                        term = x @ left.T
                    else:
                        term = (x @ u.right.to(w.device, x.dtype)) @ left.T  # (..., r) -> (..., out)
                    extra = extra + (term if rows is None else term * _row_weights(rows, term))
            return output + extra if isinstance(extra, torch.Tensor) else output

        return hook


def _row_weights(rows: tuple[float, ...], term: torch.Tensor) -> torch.Tensor:
    """`rows` as a (B, 1, ..., 1) tensor that scales `term` ((B, ..., out)) row by row."""
    if term.dim() < 2 or term.shape[0] != len(rows):
        raise ValueError(f"select_rows chose deltas for {len(rows)} rows; the pass has shape {tuple(term.shape)}")
    return torch.tensor(rows, dtype=term.dtype, device=term.device).view(-1, *([1] * (term.dim() - 1)))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown positions policy {policy!r}; choose one of: {', '.join(POLICIES)}")


def _past_length(cache) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2])  # legacy tuple of (key, value) per layer: (B, heads, T, d)
