"""Which memory edits are in scope for a question: exact subject mentions first, then close vectors.

Two paths, because they fail differently:

* Exact: the question names the edit's subject as whole words (after normalising case, accents,
  punctuation, spacing and a leading "the"). Found through a dict of subject n-grams, so a lookup
  costs O(question length x distinct subject lengths) whatever the number of edits.
  A name written with one slip ("Manuel Drorego") counts as named too (`kbchat.memory.names`).
* Nearest neighbours: the edit's key text (see `key_text_for`) is close to the question in embedding
  space (cosine >= `threshold`). Catches misspelt or partial names; the threshold comes from
  `bench/calibrate_scope.py`, chosen to keep false positives rare.

Vectors live in FAISS as float16 codes behind an ID map (`IndexIDMap2` over `IndexScalarQuantizer`):
an exhaustive scan, so removal is exact and nothing is approximate but the last ~3 decimal digits of a
cosine, and half the memory traffic of float32, which is what keeps one search at 100k edits within
the 5 ms budget on two cores (about 2.5 ms single-threaded; float32 took ~8-10 ms; HNSW was faster but
approximate and cannot remove). See bench/bench_retrieval.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from kbchat.memory.calibration import SCOPE_THRESHOLD
from kbchat.memory.names import Known, SlipIndex
from kbchat.words import normalise_words

# Single-word subjects that are ordinary function words would match almost every question; such
# edits are reachable through the vector path only.
_STOPWORDS = frozenset(
    """
    a an the and or but if of in on at by to for from with as is are was were be been am it its this
    that these those he she they we you i me my our your his her their them who whom what which when
    where why how do does did not no yes s t
    """.split()
)


@dataclass(frozen=True)
class Hit:
    """One in-scope edit for a question. `score` is the cosine between question and key text."""

    edit_id: int
    score: float
    exact: bool  # the question names the edit's subject


def key_text_for(subject: str, prompt: str, target: str) -> str:
    """The text embedded for an edit: its subject alone.

    Calibrated against the alternatives (the prompt, i.e. subject + relation; the whole new fact;
    subject + prompt) by bench/calibrate_scope.py: relation words are shared with every edit and
    question of the same relation ("... is located in"), so they pull hard negatives ("Where is the
    Louvre?") as close as true paraphrases. At each option's own threshold (all false-positive
    measures <= 2%), the subject alone finds 96% of the in-scope questions by vector alone (counting
    those that name the subject), against 90% (prompt) and 79% (fact), with the lowest threshold.
    `prompt` and `target` are accepted so the choice can change without touching callers (the ledger
    stores the key text).
    """
    del prompt, target  # see the docstring: deliberately unused
    return " ".join(subject.split())


def subject_key(subject: str) -> tuple[str, ...]:
    """The n-gram a question must contain to name `subject`; () if the subject cannot be matched safely.

    A leading "the" is dropped ("The Hague" is named by "Hague" too), and a one-word subject that is a
    function word or a single letter gives () (it would match nearly everything).
    """
    words = normalise_words(subject)
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    if len(words) == 1 and (words[0] in _STOPWORDS or (len(words[0]) == 1 and not words[0].isdigit())):
        return ()
    return tuple(words)


@contextlib.contextmanager
def _faiss_single_threaded() -> Iterator[None]:
    """Run FAISS on the calling thread only, then restore its thread count.

    One query is a memory-bound scan: OpenMP threads barely speed it up on an idle machine and, when
    the cores are busy (the chat model, another process), their barrier waits turn 2.4 ms into 30 ms
    (measured at 100k edits on 2 cores). FAISS has its own OpenMP runtime, so torch is unaffected.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class MemoryIndex:
    """In-memory scope index over active memory edits; rebuilt from the ledger at start-up.

    Thread-safe: every method takes one lock (FAISS indexes must not be searched while modified).
    Embeddings must be `dim`-sized; they are re-normalised on entry, so cosine = inner product.
    """

    def __init__(self, dim: int, threshold: float = SCOPE_THRESHOLD, known: Known = lambda _: False) -> None:
        """`known(word)`: whether a word is real, so that a mention of it is never a slip (see SlipIndex)."""
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.threshold = float(threshold)
        self._lock = threading.RLock()
        # fp16 codes, exhaustive inner-product scan; the ID map gives exact remove and reconstruct.
        self._vectors = faiss.IndexIDMap2(
            faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        )
        self._subjects: dict[int, str] = {}
        self._key_texts: dict[int, str] = {}
        self._keys: dict[int, tuple[str, ...]] = {}  # edit id -> subject n-gram (may be ())
        self._ngrams: dict[tuple[str, ...], set[int]] = {}  # subject n-gram -> edit ids
        self._key_lengths: Counter[int] = Counter()  # n-gram length -> how many keys have it
        self._slips = SlipIndex(known)  # the same keys, by their one-slip neighbourhoods

    # --- mutation ------------------------------------------------------------------------------------

    def add(self, edit_id: int, subject: str, key_text: str, embedding: np.ndarray) -> None:
        """Index one edit. Raises ValueError if `edit_id` is already indexed or the vector is malformed."""
        self.add_many([edit_id], [subject], [key_text], np.asarray(embedding).reshape(1, -1))

    def add_many(self, edit_ids: Sequence[int], subjects: Sequence[str], key_texts: Sequence[str],
                 embeddings: np.ndarray) -> None:
        """Index many edits at once (start-up rebuild from stored embeddings). All or nothing.

        `embeddings` is (n, dim). Raises ValueError on mismatched lengths, duplicate or already
        indexed ids, or a vector of the wrong size, zero length or with non-finite values.
        """
        ids = [int(i) for i in edit_ids]
        n = len(ids)
        if not (len(subjects) == len(key_texts) == n):
            raise ValueError(f"add_many: {n} ids, {len(subjects)} subjects, {len(key_texts)} key texts")
        matrix = self._as_unit_rows(embeddings, n)  # (n, dim)
        with self._lock:
            if len(set(ids)) != n:
                raise ValueError("add_many: duplicate edit ids in one call")
            present = [i for i in ids if i in self._subjects]
            if present:
                raise ValueError(f"edit {present[0]} is already in the memory index; remove it first")
            if n == 0:
                return
            self._vectors.add_with_ids(matrix, np.asarray(ids, dtype=np.int64))
            for edit_id, subject, key_text in zip(ids, subjects, key_texts, strict=True):
                self._subjects[edit_id] = subject
                self._key_texts[edit_id] = key_text
                key = subject_key(subject)
                self._keys[edit_id] = key
                if key:
                    self._ngrams.setdefault(key, set()).add(edit_id)
                    self._key_lengths[len(key)] += 1
            self._slips.add_many((i, self._keys[i]) for i in ids if self._keys[i])

    def remove(self, edit_id: int) -> None:
        """Forget an edit; it is never returned again. Raises KeyError if it is not indexed."""
        edit_id = int(edit_id)
        with self._lock:
            if edit_id not in self._subjects:
                raise KeyError(f"edit {edit_id} is not in the memory index")
            removed = self._vectors.remove_ids(np.asarray([edit_id], dtype=np.int64))
            assert removed == 1, f"FAISS removed {removed} vectors for edit {edit_id}"
            del self._subjects[edit_id], self._key_texts[edit_id]
            key = self._keys.pop(edit_id)
            self._slips.remove(edit_id)
            if key:
                ids = self._ngrams[key]
                ids.discard(edit_id)
                if not ids:
                    del self._ngrams[key]
                self._key_lengths[len(key)] -= 1
                if not self._key_lengths[len(key)]:
                    del self._key_lengths[len(key)]

    # --- queries -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._subjects)

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._subjects

    def key_text(self, edit_id: int) -> str:
        """The key text an edit was indexed with (KeyError if absent)."""
        return self._key_texts[edit_id]

    def exact_matches(self, question: str) -> tuple[list[int], set[int]]:
        """(ids whose subject the question names, ids only named inside a longer matched subject).
        A name written with one slip is named, unless its exact spelling is another edit's subject.

        The longest mention wins: in "Who is Paris Hilton?" an edit about "Paris Hilton" matches and
        one about "Paris" is shadowed, because the question is not about Paris.
        """
        words = normalise_words(question)
        with self._lock:
            lengths = sorted(self._key_lengths)
            spans: list[tuple[int, int, set[int]]] = []
            for start in range(len(words)):
                for n in lengths:
                    if start + n > len(words):
                        break
                    ids = self._ngrams.get(tuple(words[start:start + n])) or self._slips.matches(words[start:start + n])
                    if ids:
                        spans.append((start, start + n, set(ids)))
        kept: list[int] = []
        shadowed: set[int] = set()
        for start, end, ids in spans:
            inside_longer = any(s <= start and end <= e and (s, e) != (start, end) for s, e, _ in spans)
            if inside_longer:
                shadowed |= ids
            else:
                kept.extend(sorted(ids))
        kept = list(dict.fromkeys(kept))  # a subject named twice is one match
        return kept, shadowed - set(kept)

    def search(self, question: str, question_embedding: np.ndarray, k: int = 4) -> list[Hit]:
        """At most `k` in-scope edits for `question`, best first.

        Exact subject matches come first (ordered by cosine), then nearest neighbours whose cosine is at
        least `threshold` and that are neither exact matches nor shadowed by a longer exact match.
        Edits that are not in scope are never returned, so the list is often empty.
        """
        if k <= 0:
            return []
        query = self._as_unit_rows(question_embedding, 1)  # (1, dim)
        with self._lock:
            if not self._subjects:
                return []
            exact_ids, shadowed = self.exact_matches(question)
            exact = [Hit(i, self._cosine(query[0], i), True) for i in exact_ids]
            exact.sort(key=lambda h: -h.score)
            hits = exact[:k]
            if len(hits) == k:
                return hits
            skip = set(exact_ids) | shadowed
            fetch = min(len(self._subjects), k + len(skip))
            with _faiss_single_threaded():
                scores, ids = self._vectors.search(query, fetch)  # (1, fetch) each
        for score, edit_id in zip(scores[0], ids[0], strict=True):
            if len(hits) == k or edit_id < 0 or score < self.threshold:
                break  # results are sorted by score; -1 pads when fewer vectors exist
            if int(edit_id) not in skip:
                hits.append(Hit(int(edit_id), float(score), False))
        return hits

    # --- helpers -------------------------------------------------------------------------------------

    def _cosine(self, query: np.ndarray, edit_id: int) -> float:
        return float(np.dot(query, self._vectors.reconstruct(edit_id)))

    def _as_unit_rows(self, embeddings: np.ndarray, n: int) -> np.ndarray:
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1)
        if matrix.shape != (n, self.dim):
            raise ValueError(f"expected embeddings of shape ({n}, {self.dim}), got {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("embeddings contain NaN or infinite values")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)  # (n, 1)
        if np.any(norms == 0):
            raise ValueError("an embedding has zero length")
        return np.ascontiguousarray(matrix / norms, dtype=np.float32)
