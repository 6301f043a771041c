"""Audit answers kept across audits: those that depend only on the weights, the prompt and the limit.

A canary, or a neighbour no edit is in scope for, is answered the same in every audit as long as the
weights are the same; the engine keeps one `AnswerCache` and every audit's view reads and fills it.
The key carries the weights' fingerprint as the ledger stores it, so an edit that changes the weights
changes the key and an answer of other weights is never used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

CACHE_SIZE = 512


class AnswerCache:
    """A bounded map (weights, prompt, limit) -> answer, safe across threads; when full, the entry used
    least recently is dropped. Keys are whatever the caller makes of those three, hashable."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError("an answer cache holds at least one answer")
        self.size = size
        self._answers: OrderedDict[Hashable, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: Hashable) -> str | None:
        """The answer kept under `key`, or None (counted in `hits` / `misses`)."""
        with self._lock:
            answer = self._answers.get(key)
            if answer is None:
                self.misses += 1
                return None
            self._answers.move_to_end(key)
            self.hits += 1
            return answer

    def put(self, key: Hashable, answer: str) -> None:
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.size:
                self._answers.popitem(last=False)
