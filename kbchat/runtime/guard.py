"""Keeping edited subjects' names whole in answers generated with in-model patches (issue #12).

A serac patch bends the subject's name when the answer writes it again ("Bernard Giraudeow"): the
copy reads the patched question positions back through the KV cache, and the step writing it is
patched too. While the answer is partway through one of the names, the next token is therefore
predicted wholly unpatched: with the keys/values at the names' input positions taken from one extra,
unpatched prefill, and without the patches on the step itself. Everywhere else the answer reads the
patched model, which carries the edit.

Once the answer has stated one of the edits' new objects (`targets`), later steps run without the
patches on the step itself: the patch has done its work, and pressing on every generated token only
makes the answer repeat the object ("Sega, SegaMBA, SegaMBA…"). With `release`, the input's positions
are read unpatched from then on too, so the rest of the answer is the unedited model's continuation of
the text so far, which states the new fact (it reads as the model's own prose; a patched question
read back through the cache still pulls the words after the object towards it).
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


@dataclass(frozen=True)
class NameGuard:
    """`names` to keep whole, their token `positions` in the input, and `unpatched()`: a context in
    which the model runs without the patches whose effect on the names is guarded."""

    names: tuple[str, ...]
    positions: tuple[int, ...]
    unpatched: Callable[[], AbstractContextManager]
    targets: tuple[str, ...] = ()
    release: bool = False  # once a target is stated, also read the input's positions unpatched

    def stated(self, text: str) -> bool:
        """Whether the answer so far names one of the targets (a whole-word match, any case)."""
        return any(re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text, flags=re.IGNORECASE)
                   for t in self.targets if t.strip())

    def naming(self, text: str) -> bool:
        """Whether `text` ends partway through one of the names (a proper prefix that starts a word)."""
        folded = text.casefold()
        for name in self.names:
            n = name.casefold()
            for k in range(len(n) - 1, 0, -1):
                if folded.endswith(n[:k]) and (len(folded) == k or not folded[-k - 1].isalnum()):
                    return True
        return False

    def step(self, swaps: Swaps | None, text: str) -> AbstractContextManager:
        """The context of the next decoding step: wholly unpatched (the step itself, and the input's
        positions in the cache) once a target has been stated and `release` is set; wholly unpatched at
        the names' positions while `text` ends partway through a name; the step alone unpatched once a
        target has been stated; as it is otherwise."""
        stated = self.stated(text)
        if swaps is not None and stated and swaps.whole is not None:
            return self._clean(swaps.whole)
        if swaps is not None and swaps.names is not None and self.naming(text):
            return self._clean(swaps.names)
        return self.unpatched() if stated else nullcontext()

    def _clean(self, swap: CacheSwap) -> AbstractContextManager:
        stack = ExitStack()
        stack.enter_context(swap.unpatched())
        stack.enter_context(self.unpatched())
        return stack

    def start(self, model: nn.Module, input_ids: torch.Tensor, patched_cache) -> Swaps | None:
        """After the (patched) prefill of `input_ids` ((1, T)): the swaps between its cache and an
        unpatched one, at the names' positions and (with `release` and targets) at all T; None when
        there is nothing to guard or the cache cannot be swapped."""
        release = self.release and any(t.strip() for t in self.targets)
        if not (self.positions or release) or not hasattr(patched_cache, "layers"):
            return None
        with self.unpatched():
            clean = model(input_ids=input_ids, use_cache=True).past_key_values
        return Swaps(CacheSwap(patched_cache, clean, self.positions) if self.positions else None,
                     CacheSwap(patched_cache, clean, range(input_ids.shape[1])) if release else None)


@dataclass(frozen=True)
class Swaps:
    """The cache swaps of one answer: at the names' input positions, and at every input position."""

    names: CacheSwap | None
    whole: CacheSwap | None


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
