"""Keeping edited subjects' names whole in answers generated with in-model patches (issue #12).

A serac patch bends the subject's name when the answer writes it again ("Bernard Giraudeow"): the
copy reads the patched question positions back through the KV cache, and the step writing it is
patched too. While the answer is partway through one of the names, the next token is therefore
predicted wholly unpatched: with the keys/values at the names' input positions taken from one extra,
unpatched prefill, and without the patches on the step itself. Everywhere else the answer reads the
patched model, which carries the edit.

Once the answer has stated one of the edits' new objects (`targets`), later steps run without the
patches on the step itself (the question's positions stay patched in the cache): the patch has done its
work, and pressing on every generated token only makes the answer repeat the object ("Sega, SegaMBA,
SegaMBA…").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn


def name_positions(tokenizer, text: str, input_ids: torch.Tensor, names: Sequence[str]) -> tuple[int, ...]:
    """Indices of the tokens of `input_ids` (the tokenized `text`, (1, T)) covering any occurrence of any
    of `names`, ignoring case; () when the offsets cannot be matched to `input_ids`."""
    for special in (False, True):  # chat templates carry their special tokens as text; plain prompts may not
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=special)
        if enc["input_ids"] == input_ids[0].tolist():
            break
    else:
        return ()
    spans = enc["offset_mapping"]
    found: set[int] = set()
    for name in names:
        for m in re.finditer(re.escape(name), text, flags=re.IGNORECASE):
            found.update(i for i, (a, b) in enumerate(spans) if a < m.end() and b > m.start() and b > a)
    return tuple(sorted(found))


def states(text: str, words: Sequence[str]) -> bool:
    """Whether `text` names one of `words` (a whole-word match, any case)."""
    return any(re.search(rf"(?<!\w){re.escape(w.strip())}(?!\w)", text, flags=re.IGNORECASE)
               for w in words if w.strip())


def partway(text: str, words: Sequence[str]) -> bool:
    """Whether `text` ends partway through one of `words` (a proper prefix that starts a word), any case."""
    folded = text.casefold()
    for word in words:
        w = word.strip().casefold()
        for k in range(len(w) - 1, 0, -1):
            if folded.endswith(w[:k]) and (len(folded) == k or not folded[-k - 1].isalnum()):
                return True
    return False


@dataclass(frozen=True)
class NameGuard:
    """`names` to keep whole, their token `positions` in the input, and `unpatched()`: a context in
    which the model runs without the patches whose effect on the names is guarded."""

    names: tuple[str, ...]
    positions: tuple[int, ...]
    unpatched: Callable[[], AbstractContextManager]
    targets: tuple[str, ...] = ()

    def stated(self, text: str) -> bool:
        """Whether the answer so far names one of the targets (a whole-word match, any case)."""
        return states(text, self.targets)

    def naming(self, text: str) -> bool:
        """Whether `text` ends partway through one of the names (a proper prefix that starts a word)."""
        return partway(text, self.names)

    def step(self, swap: CacheSwap | None, text: str) -> AbstractContextManager:
        """The context of the next decoding step: wholly unpatched (the names' cached positions and the
        step itself) while `text` ends partway through a name; the step unpatched once a target has
        been stated; as it is otherwise."""
        if swap is None or not self.naming(text):
            return self.unpatched() if self.stated(text) else nullcontext()
        stack = ExitStack()
        stack.enter_context(swap.unpatched())
        stack.enter_context(self.unpatched())
        return stack

    def start(self, model: nn.Module, input_ids: torch.Tensor, patched_cache) -> CacheSwap | None:
        """After the (patched) prefill: the swap between its cache and an unpatched one at the names'
        positions; None when there is nothing to guard or the cache cannot be swapped."""
        if not self.positions or not hasattr(patched_cache, "layers"):
            return None
        with self.unpatched():
            clean = model(input_ids=input_ids, use_cache=True).past_key_values
        return CacheSwap(patched_cache, clean, self.positions)


class CacheSwap:
    """The patched and unpatched keys/values of a few input positions, to switch a cache between them."""

    def __init__(self, patched, clean, positions: Sequence[int]) -> None:
        self.cache = patched
        self.index = list(positions)
        self.patched = [(layer.keys[:, :, self.index].clone(), layer.values[:, :, self.index].clone())
                        for layer in patched.layers]  # (B, heads, P, d) per layer
        self.clean = [(layer.keys[:, :, self.index].clone(), layer.values[:, :, self.index].clone())
                      for layer in clean.layers]

    @contextmanager
    def unpatched(self) -> Iterator[None]:
        """Inside, the cache holds the unpatched keys/values at the names' positions."""
        self._use(self.clean)
        try:
            yield
        finally:
            self._use(self.patched)

    def _use(self, entries) -> None:
        for layer, (k, v) in zip(self.cache.layers, entries, strict=True):
            layer.keys[:, :, self.index] = k
            layer.values[:, :, self.index] = v
