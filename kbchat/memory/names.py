"""Subject names written with a slip: one letter wrong, missing or extra, or two neighbours swapped.

A user who asks "Which language does Manuel Drorego speak?" means the edit about Manuel Dorrego; the
sentence embedding barely notices the slip's meaning but moves enough to fall below the scope
threshold (calibration found 23% of misspelt names by vector). `SlipIndex` finds, for a question's
word n-grams, the subject keys exactly one slip away (optimal string alignment distance 1), and
`canonical_spelling` writes the subjects of in-scope edits back as the edit has them, so the model
reads the name its patch is keyed to.

Lookup by deletion neighbourhoods (as SymSpell): two strings one slip apart share a string obtained by
deleting at most one character from each. One letter often leads from a name to another real one
("Iceland"/"Ireland", "Schuman"/"Schumann", "Renault 4"/"Renault 5"), so a slip is only taken for one
inside a word (its first and last letters kept), with the same digits, when the word written is not a
known word (`known`: the embedder's vocabulary); and keys shorter than MIN_SLIP_CHARS letters are not
indexed, as among short names that happens all the time. `bench/calibrate_scope.py` counts what is
left: with CounterFact's 9,430 training subjects as edits, slips tie 0.17% of its prompts to a
subject they do not name (mostly true namesakes: "Robert Schuman" and the edit about "Robert
Schumann"), against 0.74% before these rules; the vector path wrongly pulls 1.3% at 400 edits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from kbchat.words import normalise_words

MIN_SLIP_CHARS = 7  # letters in a key (spaces excluded) below which slips are not looked for
_MERGE_AT = 4096  # pending entries kept in a dict before they join the sorted arrays


def slip_distance(a: str, b: str, cap: int = 2) -> int:
    """Optimal string alignment distance (insertions, deletions, substitutions, adjacent swaps),
    or `cap` when it is at least `cap`."""
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) >= cap:
            return cap
        prev2, prev = prev, row
    return min(prev[-1], cap)


Known = Callable[[str], bool]  # whether a normalised word is a real word or name (then never a slip)


def _unknown_slip(mention: str, key: str, known: Known) -> bool:
    """Whether `mention` (normalised words joined by spaces) is one slip from `key` inside a word: the
    same words but one, which keeps its first and last letters (suffixes make other words: "Valencian",
    "Schuman"), the same digits, and is not a known word itself."""
    ours, theirs = mention.split(), key.split()
    if len(ours) != len(theirs) or slip_distance(mention, key) != 1 or _digits(mention) != _digits(key):
        return False  # a different number is a different thing: "Renault 5" is not a slip of "Renault 4"
    changed = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    return all(a[0] == b[0] and a[-1] == b[-1] and not known(a) for a, b in changed)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _deletions(text: str) -> set[str]:
    """`text` and every string made by deleting one of its characters."""
    return {text} | {text[:i] + text[i + 1:] for i in range(len(text))}


class SlipIndex:
    """Subject keys (normalised word tuples, see `kbchat.memory.index.subject_key`) by their deletion
    neighbourhoods. Not thread-safe on its own: `MemoryIndex` calls it under its lock."""

    def __init__(self, known: Known = lambda _: False) -> None:
        self._known = known
        self._keys: dict[int, str] = {}  # edit id -> its key, words joined by spaces
        self._sorted = np.empty(0, dtype=np.int64)  # variant hashes, ascending
        self._owners = np.empty(0, dtype=np.int64)  # (len(_sorted),) the edit id of each hash
        self._pending: dict[int, list[int]] = {}  # variant hash -> edit ids not merged yet
        self._count = 0  # entries in _pending

    def add(self, edit_id: int, key: Sequence[str]) -> None:
        self.add_many([(edit_id, key)])

    def add_many(self, items: Iterable[tuple[int, Sequence[str]]]) -> None:
        """Index (edit id, key) pairs; a bulk load (start-up) is sorted in at once."""
        hashes: list[int] = []
        owners: list[int] = []
        for edit_id, key in items:
            joined = " ".join(key)
            if len(joined.replace(" ", "")) < MIN_SLIP_CHARS:
                continue
            self._keys[edit_id] = joined
            found = [hash(v) for v in _deletions(joined)]  # process-local: the index is in memory only
            hashes += found
            owners += [edit_id] * len(found)
        if self._count + len(hashes) >= _MERGE_AT:
            self._merge(hashes, owners)
            return
        for h, edit_id in zip(hashes, owners, strict=True):
            self._pending.setdefault(h, []).append(edit_id)
        self._count += len(hashes)

    def remove(self, edit_id: int) -> None:
        """Forget an edit. Its hashes stay until the next merge; a lookup ignores ids without a key."""
        self._keys.pop(edit_id, None)

    def matches(self, words: Sequence[str]) -> set[int]:
        """Edits whose key is exactly one slip away from `words` (a question's n-gram, normalised)."""
        candidate = " ".join(words)
        if len(candidate.replace(" ", "")) < MIN_SLIP_CHARS - 1:
            return set()
        hashes = np.asarray([hash(v) for v in _deletions(candidate)], dtype=np.int64)
        found: set[int] = set()
        for h in hashes.tolist():
            found.update(self._pending.get(h, ()))
        lo = np.searchsorted(self._sorted, hashes, side="left")
        hi = np.searchsorted(self._sorted, hashes, side="right")
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            found.update(self._owners[a:b].tolist())
        return {i for i in found if i in self._keys and _unknown_slip(candidate, self._keys[i], self._known)}

    def _merge(self, hashes: list[int], owners: list[int]) -> None:
        """Sort the pending entries and (hashes, owners) into the arrays, dropping removed edits'."""
        for h, ids in self._pending.items():
            hashes += [h] * len(ids)
            owners += ids
        live = np.fromiter(self._keys, dtype=np.int64, count=len(self._keys))
        merged = np.concatenate([self._sorted, np.asarray(hashes, dtype=np.int64)])
        who = np.concatenate([self._owners, np.asarray(owners, dtype=np.int64)])
        keep = np.isin(who, live)
        merged, who = merged[keep], who[keep]
        order = np.argsort(merged, kind="stable")
        self._sorted, self._owners = merged[order], who[order]
        self._pending, self._count = {}, 0


_WORD = re.compile(r"[^\W_]+")  # the words `normalise_words` sees, with their places in the text


def canonical_spelling(text: str, subjects: Sequence[str], known: Known = lambda _: False) -> str:
    """`text` with each mention of one of `subjects` that differs from it only in case, accents or one
    slip (see `SlipIndex`) written as the subject is: "where is the efifel tower?" -> "where is the
    Eiffel Tower?". Mentions already written so, names too short to judge a slip on, and mentions
    whose differing word is `known`, stay."""
    for subject in sorted(set(subjects), key=len, reverse=True):
        key = normalise_words(subject)
        if not key:
            continue
        joined = " ".join(key)
        slips_ok = len(joined.replace(" ", "")) >= MIN_SLIP_CHARS
        spans = [m.span() for m in _WORD.finditer(text)]
        found = []
        for start in range(len(spans) - len(key) + 1):
            lo, hi = spans[start][0], spans[start + len(key) - 1][1]
            words = " ".join(normalise_words(text[lo:hi]))
            if text[lo:hi] != subject and (words == joined or (slips_ok and _unknown_slip(words, joined, known))):
                found.append((lo, hi))
        for lo, hi in reversed(found):  # from the end, so earlier spans stay valid
            text = text[:lo] + subject + text[hi:]
    return text
