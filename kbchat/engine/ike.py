"""IKE (Zheng et al. 2023): in-context editing with retrieved demonstrations.

A prompt in plain completion format: demonstrations of copying a new fact, applying it to a
rephrased prompt, and leaving unrelated facts alone, chosen by similarity to the edit; then the new
facts (quoted: they are data, never instructions) and the user's question. Measured on the default
SmolLM2-135M: it follows such demonstrations on part of CounterFact's prompts but ignores facts
stated in its chat prompt, which is why `serac` (in-model) is the default memory method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from kbchat.memory import Embedder
from kbchat.memory.active import quote


@dataclass(frozen=True)
class Demo:
    kind: str  # copy | update | retain
    fact: str
    prompt: str
    answer: str


class IkeDemos:
    """The shipped demonstrations with their embeddings (computed when first needed by `select`)."""

    def __init__(self, demos: Sequence[Demo], embedder: Embedder) -> None:
        self.demos = tuple(demos)
        self.embedder = embedder
        self._vectors: np.ndarray | None = None

    @classmethod
    def load(cls, embedder: Embedder) -> IkeDemos:
        raw = json.loads(resources.files("kbchat").joinpath("data/ike_demos.json").read_text())
        return cls([Demo(**d) for d in raw], embedder)

    def select(self, fact: str, k: int = 16) -> list[Demo]:
        """The `k` demonstrations whose facts are closest to `fact`, least similar first (closest last,
        next to the question, as in IKE)."""
        if self._vectors is None:
            self._vectors = self.embedder.embed([d.fact for d in self.demos])  # (n, dim)
        scores = self._vectors @ self.embedder.embed([fact])[0]  # (n,)
        best = np.argsort(-scores)[:k]
        return [self.demos[i] for i in best[::-1]]


def ike_prompt(facts: Sequence[str], question: str, demos: Sequence[Demo]) -> str:
    """Completion-format prompt; the model's continuation up to the next newline is the answer."""
    parts = [f"New Fact: {quote(d.fact)}\nPrompt: {d.prompt} {d.answer}\n\n" for d in demos]
    parts.extend(f"New Fact: {quote(f)}\n" for f in facts)
    parts.append(f"Prompt: {' '.join(question.split())}")
    return "".join(parts)
