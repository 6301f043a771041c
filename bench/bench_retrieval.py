"""Memory-index speed: indexing one edit, and answering one question, at several index sizes.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.bench_retrieval [--sizes 100,10000,100000] [--real 10000]
        [--torch-threads 1]

Targets: indexing an edit (embedding its key text + `MemoryIndex.add`) < 100 ms; searching for one
question (`MemoryIndex.search`, without embedding the question) < 5 ms at 100,000 edits. Embedding the
question is timed separately: it does not depend on the index size.

The edits are synthetic (made-up names "Velkora Pundimar" with a fact each). The first --real of them
(default 10,000; -1 for all) get real embeddings, computed in batches; the rest get random unit
vectors, because embedding 100,000 texts takes minutes to tens of minutes on a shared 2-core machine. Every edit a question is about is embedded for real either way, and search
cost does not depend on the vectors' values (the scan is exhaustive), so the timings hold.

On a machine whose cores are busy, torch's two intra-op threads wait on each other: embedding one
question took 17-470 ms (median) with 2 threads against 8-9 ms with --torch-threads 1.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import numpy as np

from kbchat.memory import Embedder, MemoryIndex, key_text_for

CITIES = ["Rome", "Paris", "Berlin", "Madrid", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth"]
SYLLABLES = ["ka", "lo", "mir", "vel", "dun", "sa", "tor", "pe", "qua", "zen", "bri", "ol", "nax", "fe",
             "ru", "gim", "sol", "tha", "wen", "ix", "bo", "cer", "da", "lum"]
OUT_OF_SCOPE = ["What is the capital of France?", "Who founded Apple?", "What is the tallest mountain?",
                "How do I boil an egg?", "Who wrote Hamlet?", "What is the speed of light?",
                "Tell me a joke.", "Which planet is closest to the sun?"]


def synthetic_edits(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """n (subject, prompt, target) triples with unique made-up two-word subjects."""
    rng = random.Random(seed)
    subjects: set[str] = set()
    while len(subjects) < n:
        words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()
                 for _ in range(2)]
        subjects.add(" ".join(words))
    return [(s, f"{s} is located in", rng.choice(CITIES)) for s in sorted(subjects)]


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(ordered):7.2f} ms  p95 {p95:7.2f} ms"


def misspell(subject: str, rng: random.Random) -> str:
    first, rest = subject.split(" ", 1)
    i = rng.randrange(1, len(first) - 1)
    return first[:i] + first[i + 1:] + " " + rest  # drop one letter


def prepare_vectors(embedder: Embedder, keys: list[str], n_real: int) -> np.ndarray:
    """(N, dim) key vectors: real embeddings for the first `n_real`, random unit vectors for the rest."""
    vectors = np.random.default_rng(0).standard_normal((len(keys), embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:n_real] = embedder.embed(keys[:n_real])
    return vectors


def questions_for(bulk: list, queried: list[int], rng: random.Random) -> list[tuple[str, int | None]]:
    """Half name an indexed subject, a quarter misspell one, a quarter are off-topic: (text, edit expected)."""
    questions: list[tuple[str, int | None]] = []
    for n, i in enumerate(queried):
        subject = bulk[i][0]
        questions.append((f"Where is {subject} located?", i) if n % 2 == 0
                         else (f"Where is {misspell(subject, rng)}?", None))
        questions.append((rng.choice(OUT_OF_SCOPE), None))
    return questions


def time_questions(embedder: Embedder, index: MemoryIndex, questions: list[tuple[str, int | None]]) -> dict:
    """Per question, ms to embed it and to search; how many named-subject questions hit their edit first."""
    embed_ms, search_ms, correct, named = [], [], 0, 0
    embedder.embed([questions[0][0]])  # warm-up outside the timings
    index.search(questions[0][0], embedder.embed([questions[0][0]])[0])
    for text, expected in questions:
        start = time.perf_counter()
        vec = embedder.embed([text])[0]
        embed_ms.append(ms_since(start))
        start = time.perf_counter()
        hits = index.search(text, vec, k=4)
        search_ms.append(ms_since(start))
        if expected is not None:
            named += 1
            correct += bool(hits) and hits[0].edit_id == expected and hits[0].exact
    return {"embed_ms": embed_ms, "search_ms": search_ms, "correct": correct, "named": named}


def time_adds(embedder: Embedder, index: MemoryIndex, first_id: int, extra: list) -> tuple[list, list]:
    """ms to embed and to index each of `extra`, added one at a time (removed again afterwards, so
    every size measures the same operations)."""
    add_embed_ms, add_index_ms = [], []
    for j, (subject, prompt, target) in enumerate(extra):
        key = key_text_for(subject, prompt, target)
        start = time.perf_counter()
        vec = embedder.embed([key])[0]
        add_embed_ms.append(ms_since(start))
        start = time.perf_counter()
        index.add(first_id + j, subject, key, vec)
        add_index_ms.append(ms_since(start))
    for j in range(len(extra)):
        index.remove(first_id + j)
    return add_embed_ms, add_index_ms


def bench_size(embedder: Embedder, size: int, bulk: list, keys: list[str], vectors: np.ndarray, n_real: int,
               extra: list, n_questions: int, rng: random.Random) -> None:
    """Builds an index of the first `size` edits and prints its timings."""
    queried = rng.sample(range(size), min(size, n_questions // 2))
    fake = [i for i in queried if i >= n_real]
    if fake:  # the edits the questions are about always get their real vectors
        vectors[fake] = embedder.embed([keys[i] for i in fake])
    index = MemoryIndex(embedder.dim)
    start = time.perf_counter()
    index.add_many(range(size), [e[0] for e in bulk[:size]], keys[:size], vectors[:size])
    build_ms = ms_since(start)
    questions = questions_for(bulk, queried, rng)
    asked = time_questions(embedder, index, questions)
    add_embed_ms, add_index_ms = time_adds(embedder, index, size, extra)
    total_add = [a + b for a, b in zip(add_embed_ms, add_index_ms, strict=True)]
    print(f"\n== {size:,} edits in the index (bulk add_many {build_ms:.0f} ms; "
          f"load average {os.getloadavg()[0]:.1f}) ==")
    print(f"  index one edit, total          {summary(total_add)}   (target < 100 ms)")
    print(f"    embedding its key text       {summary(add_embed_ms)}")
    print(f"    MemoryIndex.add              {summary(add_index_ms)}")
    print(f"  answer one question ({len(questions)} questions)")
    print(f"    embedding the question       {summary(asked['embed_ms'])}")
    print(f"    MemoryIndex.search alone     {summary(asked['search_ms'])}   (target < 5 ms)")
    print(f"  named-subject questions whose first hit is that edit, exact: {asked['correct']}/{asked['named']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000", help="comma-separated index sizes")
    parser.add_argument("--real", type=int, default=10_000,
                        help="edits with real embeddings (-1: all); the rest get random unit vectors")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--questions", type=int, default=200, help="questions timed per size")
    parser.add_argument("--adds", type=int, default=50, help="single edits timed per size")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = random.Random(0)
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    start = time.perf_counter()
    embedder = Embedder.load()
    load_ms = ms_since(start)
    edits = synthetic_edits(max(sizes) + args.adds)
    bulk, extra = edits[:max(sizes)], edits[max(sizes):]  # extra: added one at a time while timed
    keys = [key_text_for(*e) for e in bulk]
    print(f"embedder {embedder.name} loaded in {load_ms / 1000:.1f} s; torch threads: "
          f"{__import__('torch').get_num_threads()}; {os.cpu_count()} CPUs")
    start = time.perf_counter()
    n_real = len(keys) if args.real < 0 else min(args.real, len(keys))
    vectors = prepare_vectors(embedder, keys, n_real)
    how = ("real embeddings for all" if n_real == len(keys) else
           f"real embeddings for the first {n_real:,}, RANDOM unit vectors for the other "
           f"{len(keys) - n_real:,} except the edits questions are about")
    print(f"{len(keys)} synthetic edits prepared in {time.perf_counter() - start:.1f} s ({how})")
    for size in sizes:
        bench_size(embedder, size, bulk, keys, vectors, n_real, extra, args.questions, rng)


if __name__ == "__main__":
    main()
