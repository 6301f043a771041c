"""`ModelRuntime`: the only owner of the weights and of the in-model patch table.

Answers read the model under a readers-writer lock; computing a delta, applying one and rebuilding
the weights take it exclusively, so an answer sees the weights before or after a change, never a
mix. Patches (the in-model memory of serac, the audit's "without this edit" negations) are selected
per generation; removing one while an answer that selected it is streaming is safe: that answer
keeps it to its end (see `methods.scoped`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kbchat.errors import KbchatError
from kbchat.runtime.decoding import (
    batch_greedy,
    chat_input_ids,
    chat_stops,
    chat_text,
    completion_input_ids,
    greedy_text,
    next_word_gaps,
    stream_tokens,
)
from kbchat.runtime.guard import NameGuard, name_positions
from kbchat.runtime.loading import LoadedModel
from kbchat.runtime.locks import ReadWriteLock
from kbchat.runtime.steering import Steer, held_until_stated, steered_tokens
from kbchat.runtime.weights import WeightState
from methods import Delta
from methods.lora import AdapterError, to_lora
from methods.scoped import ScopedDeltas

T = TypeVar("T")


class StaleWeights(KbchatError):
    """The weights changed between an answer's plan (made at `ModelRuntime.version`) and its generation."""


@dataclass(frozen=True)
class Prompt:
    """What the model is given: chat messages (answered in the assistant's turn) or raw text to continue."""

    messages: tuple[dict[str, str], ...] | None = None
    text: str | None = None
    stops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a Prompt has either messages or text")


class ModelRuntime:
    """The loaded model with its weights = base + active deltas, and the patches answers may select."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self._lock = ReadWriteLock()
        self._weights = WeightState(loaded.model)
        self._patches = ScopedDeltas(loaded.model)
        self._base_fingerprint: str | None = None
        self._deltas: tuple[Delta, ...] = ()  # the active deltas, in the order they were applied
        self._last_fingerprint: str | None = None
        self._fingerprint_lock = threading.Lock()
        self._version = 0  # weight changes so far: what an answer's plan was made against

    # -- what the model is --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def device_label(self) -> str:
        dev = self.loaded.device
        return f"{dev.name} ({str(dev.dtype).removeprefix('torch.')})"

    @property
    def context_size(self) -> int:
        """How many tokens (prompt + answer) the model can attend to."""
        config = self.loaded.model.config
        return int(getattr(config, "max_position_embeddings", None) or 2048)

    def prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> int:
        """The length in tokens of `messages` in the model's chat format."""
        return int(chat_input_ids(self.loaded.tokenizer, messages, "cpu").shape[-1])

    @property
    def state_key(self) -> str:
        """The ledger meta key under which the fingerprint of this model's edited weights is kept."""
        dev = self.loaded.device
        return f"weights:{self.name}:{dev.name.split(':')[0]}:{str(dev.dtype).removeprefix('torch.')}"

    def close(self) -> None:
        self._patches.close()

    def save(self, folder: str | Path) -> Path:
        """Write the current weights (base + active deltas, no patches) as a Hugging Face checkpoint
        into `folder`, which must be new or empty."""
        target = Path(folder).expanduser()
        if target.exists() and any(target.iterdir()):
            raise KbchatError(f"{target} is not empty: choose a new folder for the export")
        with self._lock.read():
            self.loaded.model.save_pretrained(target)
            self.loaded.tokenizer.save_pretrained(target)
        return target

    def save_adapter(self, folder: str | Path, max_rank: int | None = None) -> Path:
        """Write the active deltas (not the patches) as a PEFT LoRA adapter into the new or empty `folder`:
        served on top of the base model (`base_model_name_or_path`: the folder this model was loaded
        from), it gives the current weights. See `methods.lora` for ranks, padding and FT-L."""
        target = Path(folder).expanduser()
        if target.exists() and any(target.iterdir()):
            raise KbchatError(f"{target} is not empty: choose a new folder for the export")
        with self._lock.read():
            try:
                to_lora(self._deltas, self.loaded.model, base_model=str(self.loaded.source),
                        max_rank=max_rank).save(target)
            except AdapterError as exc:
                raise KbchatError(f"cannot export a LoRA adapter: {exc}") from exc
        return target

    # -- reading ------------------------------------------------------------------------------------

    def generate(self, prompt: Prompt, patches: Sequence[Hashable], limit: int,
                 cancel: threading.Event | None = None, *, names: Sequence[str] = (),
                 targets: Sequence[str] = (), fixed: Sequence[Hashable] = (),
                 steer: Steer | None = None, unedited: Sequence[Hashable] = (),
                 version: int | None = None) -> Iterator[str]:
        """Greedy answer pieces for `prompt` with `patches` and `fixed` switched on; a generator that
        holds the read lock while it runs (close it, or exhaust it, on the thread that iterates it).
        With `version` (the `version` the answer was planned at), StaleWeights is raised before any
        piece when the weights have changed since: the plan (which weight edits the question names,
        their `unedited` patches) would not match the weights read.

        The edits being answered are `patches` and the weight edits that the patches `unedited` cancel
        (switched on, they give the model without those edits); "unedited" below is the model with
        `fixed` and `unedited` on and `patches` off. `names` (the edits' subjects) are copied into the
        answer unedited, and once one of `targets` (their new objects) is stated, later steps run
        unedited (see `guard`); with `steer` the answer is instead worded by the unedited model (reading
        the prompt without `steer.without`) and only the new object by the edited one, the edited
        answer given instead when the steered one's first sentence misses every target and
        `steer.fallback` is set (`steering`). `fixed` patches act throughout.
        """
        edited, clean = (*patches, *fixed), (*fixed, *unedited)
        if steer is None or not (patches or unedited) or not any(t.strip() for t in targets):
            yield from self._patched(prompt, edited, clean, limit, cancel, names, targets, version)
            return
        steered = self._steered(prompt, edited, clean, limit, cancel, names, targets, steer, version)
        if not steer.fallback:
            yield from steered
            return
        # the fallback reads the weights under a second hold of the lock: checked against the same version
        yield from held_until_stated(steered, lambda: self._patched(prompt, edited, clean, limit, cancel, names,
                                                                    targets, version), targets)

    def _steered(self, prompt: Prompt, edited: Sequence[Hashable], clean: Sequence[Hashable], limit: int,
                 cancel: threading.Event | None, names: Sequence[str], targets: Sequence[str],
                 steer: Steer, version: int | None) -> Iterator[str]:
        ids, stops = self._input(prompt)
        clean_ids = None
        if prompt.messages is not None and steer.without:
            clean_ids, _ = self._input(Prompt(messages=tuple(m for m in prompt.messages if m not in steer.without)))
        with self._reading(version):
            yield from steered_tokens(self.loaded.model, self.loaded.tokenizer, ids, limit,
                                      lambda: self._patches.select_rows((edited, clean)),
                                      lambda: self._patches.select(clean), tuple(targets), cancel, stops, clean_ids,
                                      tuple(names))

    def _patched(self, prompt: Prompt, edited: Sequence[Hashable], clean: Sequence[Hashable], limit: int,
                 cancel: threading.Event | None, names: Sequence[str], targets: Sequence[str],
                 version: int | None) -> Iterator[str]:
        """The edited model's answer, `names` and the steps after a target guarded by the `clean` selection."""
        tokenizer = self.loaded.tokenizer
        ids, stops = self._input(prompt)
        guard = None
        if names and edited != clean:
            text = (prompt.text or "") if prompt.messages is None else chat_text(tokenizer, prompt.messages)
            guard = NameGuard(tuple(names), name_positions(tokenizer, text, ids, names),
                              lambda: self._patches.select(clean), tuple(targets))
        with self._reading(version), self._patches.select(edited):
            yield from stream_tokens(self.loaded.model, tokenizer, ids, limit, cancel, stops, guard)

    @contextmanager
    def _reading(self, version: int | None) -> Iterator[None]:
        """The read lock, refused (StaleWeights) when the weights are no longer at `version`."""
        with self._lock.read():
            if version is not None and version != self._version:
                raise StaleWeights(f"the weights changed since this answer was planned (at {version}, "
                                   f"now {self._version})")
            yield

    def _input(self, prompt: Prompt) -> tuple[Any, tuple[str, ...]]:
        """The (1, T) input ids of `prompt` and the stop strings its answer ends at."""
        tokenizer, device = self.loaded.tokenizer, self.loaded.device.name
        if prompt.messages is None:
            return completion_input_ids(tokenizer, prompt.text or "", device), prompt.stops
        # a model without a chat template answers in the plain format: stop at its next line
        stops = tuple(dict.fromkeys(prompt.stops + chat_stops(tokenizer)))
        return chat_input_ids(tokenizer, prompt.messages, device), stops

    def generate_many(self, prompts: Sequence[Prompt], patches: Sequence[Hashable], limit: int, *,
                      fixed: Sequence[Hashable] = ()) -> list[str]:
        """The whole greedy answer to each prompt, decoded in batches (`decoding.batch_greedy`) with
        `patches` and `fixed` switched on, under one hold of the read lock: for each prompt the text
        `generate(prompt, patches, limit, fixed=fixed)` joins to, in order. No name guard: give only
        prompts whose answers need none."""
        inputs = [self._input(p) for p in prompts]
        by_stops: dict[tuple[str, ...], list[int]] = {}
        for i, (_ids, stops) in enumerate(inputs):
            by_stops.setdefault(stops, []).append(i)
        out = [""] * len(prompts)
        with self._lock.read(), self._patches.select([*patches, *fixed]):
            for stops, rows in by_stops.items():
                texts = batch_greedy(self.loaded.model, self.loaded.tokenizer, [inputs[i][0] for i in rows],
                                     limit, stops)
                for i, text in zip(rows, texts, strict=True):
                    out[i] = text
        return out

    def answer(self, question: str, limit: int) -> str:
        """The unpatched model's greedy chat answer to `question` (no memory, no history)."""
        prompt = Prompt(messages=({"role": "user", "content": question},))
        return "".join(self.generate(prompt, (), limit)).strip()

    def complete(self, text: str, limit: int, stops: Sequence[str] = ()) -> str:
        """The unpatched model's greedy continuation of `text`."""
        return "".join(self.generate(Prompt(text=text, stops=tuple(stops)), (), limit)).strip()

    def score(self, fn: Callable[[Any, Any, Sequence[tuple[str, str]]], list[T]],
              pairs: Sequence[tuple[str, str]], patches: Sequence[Hashable] = ()) -> list[T]:
        """`fn(model, tokenizer, pairs)` (a teacher-forced scorer) with `patches` switched on."""
        with self._lock.read(), self._patches.select(patches):
            return fn(self.loaded.model, self.loaded.tokenizer, pairs)

    def word_gaps(self, text: str, offsets: Sequence[int]) -> list[float]:
        """See `decoding.next_word_gaps`: how far each word of `text` is from the model's own choice."""
        with self._lock.read():
            return next_word_gaps(self.loaded.model, self.loaded.tokenizer, text, offsets)

    # -- computing edits ----------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[tuple[Any, Any]]:
        """(model, tokenizer) with no answer running: for computing a delta (it hooks the model)."""
        with self._lock.write():
            yield self.loaded.model, self.loaded.tokenizer

    # -- the weights --------------------------------------------------------------------------------

    @property
    def deltas(self) -> tuple[Delta, ...]:
        return self._deltas

    def fingerprint(self) -> str:
        with self._lock.read():
            return self._weights.fingerprint()

    @property
    def version(self) -> int:
        """How many times the weights have changed here (replay, apply, rebuild). Read it before what
        an answer is planned on (the ledger's active weight edits): the change is counted after its
        ledger write, so a plan made after reading `version` sees at least that state."""
        return self._version

    def last_fingerprint(self) -> str | None:
        """The weights' fingerprint as of the last replay, apply or rebuild (None before any): what the
        ledger records for them, without hashing the model again."""
        return self._last_fingerprint

    def base_fingerprint(self) -> str:
        """Fingerprint of the weights before any delta; computed once, when first needed."""
        with self._fingerprint_lock:
            if self._base_fingerprint is None:
                with self._lock.write():
                    active = self._deltas
                    if active:  # rebuild the base briefly
                        self._weights.rebuild([])
                    self._base_fingerprint = self._weights.fingerprint()
                    if active:
                        self._weights.rebuild(active)
            return self._base_fingerprint

    def replay(self, deltas: Sequence[Delta]) -> str:
        """Weights := base + `deltas` in order (at start-up); returns their fingerprint."""
        with self._lock.write():
            self._weights.rebuild(deltas)
            self._deltas = tuple(deltas)
            self._last_fingerprint = self._weights.fingerprint()
            self._version += 1
            return self._last_fingerprint

    def apply(self, delta: Delta, record: Callable[[str, str], T]) -> T:
        """Apply `delta` on top, then `record(before, after)` (the ledger write); if recording fails the
        weights are restored exactly and the error propagates."""
        with self._lock.write():
            before = self._weights.fingerprint()
            applied = self._weights.apply(delta)
            after = self._weights.fingerprint()
            try:
                result = record(before, after)
            except BaseException:
                applied.undo()
                raise
            self._deltas = (*self._deltas, delta)
            self._last_fingerprint = after
            self._version += 1
            return result

    def trial(self, delta: Delta, prompts: Sequence[str], limit: int) -> list[str]:
        """The greedy continuations of `prompts` with `delta` applied to the weights (then removed
        exactly): what the weights alone would say after the delta."""
        model, tokenizer, device = self.loaded.model, self.loaded.tokenizer, self.loaded.device.name
        with self._lock.write():
            applied = self._weights.apply(delta)
            try:
                return [greedy_text(model, tokenizer, completion_input_ids(tokenizer, p, device), limit, ("\n",))
                        for p in prompts]
            finally:
                applied.undo()

    def rebuild(self, deltas: Sequence[Delta], record: Callable[[str], T]) -> T:
        """Weights := base + `deltas`, then `record(after)`; if recording fails the previous weights come
        back (rebuilt from the previous deltas) and the error propagates."""
        with self._lock.write():
            previous = self._deltas
            self._weights.rebuild(deltas)
            after = self._weights.fingerprint()
            try:
                result = record(after)
            except BaseException:
                self._weights.rebuild(previous)
                raise
            self._deltas = tuple(deltas)
            self._last_fingerprint = after
            self._version += 1
            return result

    # -- the patch table ----------------------------------------------------------------------------

    def add_patch(self, key: Hashable, delta: Delta) -> None:
        """A patch acts on every position of the passes that select it, as if it were in the weights
        (the "prompt" policy of `methods.scoped` lost the Eiffel edit here; the name guard is what
        keeps names whole)."""
        self._patches.add(key, delta, positions="all")

    def remove_patch(self, key: Hashable) -> None:
        """Answers already using the patch keep it to their end; later ones no longer see it."""
        self._patches.remove(key)

    def has_patch(self, key: Hashable) -> bool:
        return key in self._patches
