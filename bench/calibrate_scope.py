"""Choose the cosine threshold (and the key text) for the memory index's nearest-neighbour path.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.calibrate_scope [--n 400] [--seed 0] [--max-fpr 0.02]

From CounterFact records it builds, per edit,
  in-scope questions:  its own prompt, its rephrase_prompt, four generated questions ("Where is X?",
                       "What is X's <relation noun>?", "Tell me about X.", "What do you know about X?"),
                       and two variants the exact path cannot match (X misspelt; a person's surname
                       alone), reported separately as "variant";
  out-of-scope ones:   its locality_prompt (same relation, other subject: the hard negative), two
                       other records' prompts (other subject) and one everyday question.
It embeds everything with the packaged embedder, then for each candidate key text picks the lowest
threshold whose false-positive rate on the out-of-scope pairs stays <= --max-fpr, and prints
precision / recall / FPR for exact-only, embedding-only and combined matching, plus what a full index
of all the edits returns for each question (`MemoryIndex.search`, k=4).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kbchat.memory import SCOPE_THRESHOLD, Embedder, MemoryIndex, key_text_for, subject_key
from kbchat.memory.names import SlipIndex
from kbchat.words import normalise_words

DATA = Path("/work/shared/data/counterfact/counterfact-train.json")

KEY_OPTIONS: dict[str, Callable[[str, str, str], str]] = {
    "subject (key_text_for)": key_text_for,
    "prompt (subject + relation)": lambda s, p, t: p,
    "fact (prompt + target)": lambda s, p, t: f"{p} {t}",
    "subject + prompt": lambda s, p, t: f"{s}. {p}",
}

# Relation keyword in the prompt -> the noun a user would ask about.
RELATION_NOUNS = [
    ("twin city", "twin city"), ("capital", "capital"), ("located", "location"), ("language", "language"),
    ("speak", "language"), ("spoke", "language"), ("citizen", "citizenship"), ("position", "position"),
    ("sport", "sport"), ("instrument", "instrument"), ("founded", "founder"), ("religion", "religion"),
    ("performing", "genre"), ("genre", "genre"), ("owned", "owner"), ("owner", "owner"),
    ("headquarter", "headquarters"), ("developed", "developer"), ("produced", "producer"),
    ("manufactured", "manufacturer"), ("created", "creator"), ("born", "birthplace"),
    ("died", "place of death"), ("work", "employer"), ("employ", "employer"), ("label", "record label"),
    ("continent", "continent"), ("country", "country"), ("profession", "profession"),
    ("occupation", "occupation"), ("affiliated", "affiliation"), ("part of", "affiliation"),
    ("named after", "namesake"), ("position", "position"), ("broadcast", "network"), ("plays", "position"),
]

EVERYDAY_QUESTIONS = [
    "What is the capital of France?", "Who founded Apple?", "What is the tallest mountain?",
    "How do I boil an egg?", "Write a short poem about autumn.", "What is two plus two?",
    "Who wrote Hamlet?", "How do you say hello in Spanish?", "What is the speed of light?",
    "Can you recommend a good book?", "What's the weather like on Mars?", "How many legs does a spider have?",
    "Explain photosynthesis simply.", "Who painted the Mona Lisa?", "What is the largest ocean?",
    "Tell me a joke.", "When did World War II end?", "What language is spoken in Brazil?",
    "Where is the Louvre?", "Who is the president of the United States?", "How far is the Moon?",
    "What does DNA stand for?", "Which planet is closest to the sun?", "How do I sort a list in Python?",
    "What is the population of Tokyo?", "Who discovered penicillin?", "What sport is played at Wimbledon?",
    "What instrument did Mozart play?", "Which continent is Egypt in?", "What is the currency of Japan?",
    "Summarise the plot of Romeo and Juliet.", "What is machine learning?",
]


@dataclass(frozen=True)
class Question:
    text: str
    edit: int  # index of the edit the pair compares against
    in_scope: bool
    kind: str  # prompt | rephrase | question | variant | locality | other | everyday
    source: int = -1  # for "other": the edit whose prompt this is (a hit on it is right)


def relation_noun(prompt: str) -> str:
    lowered = prompt.lower()
    return next((noun for word, noun in RELATION_NOUNS if word in lowered), "origin")


def misspell(subject: str, rng: random.Random) -> str | None:
    """Swap two inner letters of the subject's longest word ("Darrieux" -> "Darireux")."""
    words = subject.split()
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    word = words[longest]
    if len(word) < 5 or not word.isalpha():
        return None
    i = rng.randrange(1, len(word) - 2)
    if word[i] == word[i + 1]:
        return None
    words[longest] = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return " ".join(words)


def surname(subject: str) -> str | None:
    """The last word of what looks like a person's name: 2-3 capitalised alphabetic words."""
    words = subject.split()
    if not 2 <= len(words) <= 3 or not all(w[:1].isupper() and w.isalpha() for w in words):
        return None
    return words[-1] if len(words[-1]) >= 4 else None


def load_edits(path: Path, n: int, seed: int) -> list[dict[str, str]]:
    records = json.loads(path.read_text())
    rng = random.Random(seed)
    rng.shuffle(records)
    edits, seen = [], set()
    for r in records:
        key = subject_key(r["subject"])
        # One edit per subject, and only prompts that name their subject (what /edit produces).
        if not key or key in seen or not re.search(re.escape(r["subject"]), r["prompt"], re.IGNORECASE):
            continue
        seen.add(key)
        edits.append(r)
        if len(edits) == n:
            break
    return edits


def build_questions(edits: list[dict[str, str]], seed: int) -> list[Question]:
    rng = random.Random(seed + 1)
    out: list[Question] = []
    for i, r in enumerate(edits):
        s = r["subject"]
        out += [Question(r["prompt"], i, True, "prompt"), Question(r["rephrase_prompt"], i, True, "rephrase")]
        for q in (f"Where is {s}?", f"What is {s}'s {relation_noun(r['prompt'])}?", f"Tell me about {s}.",
                  f"What do you know about {s}?"):
            out.append(Question(q, i, True, "question"))
        typo = misspell(s, rng)
        if typo:
            out.append(Question(f"What is {typo}'s {relation_noun(r['prompt'])}?", i, True, "variant"))
        last = surname(s)
        if last:
            out.append(Question(r["rephrase_prompt"].replace(s, last), i, True, "variant"))
        out.append(Question(r["locality_prompt"], i, False, "locality"))
        for _ in range(2):
            j = rng.randrange(len(edits))
            if subject_key(edits[j]["subject"]) != subject_key(s):
                out.append(Question(edits[j]["prompt"], i, False, "other", source=j))
        out.append(Question(rng.choice(EVERYDAY_QUESTIONS), i, False, "everyday"))
    return out


def rates(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(precision, recall, false-positive rate) of boolean predictions against boolean truth."""
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, int(truth.sum()))
    fpr = fp / max(1, int((~truth).sum()))
    return precision, recall, fpr


@dataclass(frozen=True)
class KeyScores:
    own: np.ndarray  # (Q,) cosine of each question with the edit it is paired with
    wrong: np.ndarray  # (Q,) best cosine with any edit it is NOT about and does not name


def score_keys(q_vecs: np.ndarray, keys: np.ndarray, questions: list[Question],
               named: np.ndarray) -> KeyScores:
    cos = q_vecs @ keys.T  # (Q, N)
    rows = np.arange(len(questions))
    own = cos[rows, [q.edit for q in questions]]
    allowed = named.copy()  # (Q, N): edits a hit on would be right (or found by the exact path anyway)
    for i, q in enumerate(questions):
        if q.in_scope:
            allowed[i, q.edit] = True
        if q.source >= 0:
            allowed[i, q.source] = True
    wrong = np.where(allowed, -1.0, cos).max(axis=1)
    return KeyScores(own, wrong)


def measure(scores: KeyScores, t: float, truth: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    pred = scores.own >= t
    _, recall, fpr = rates(pred, truth)
    return {
        "recall": recall,
        "named": float(np.mean(pred[truth & (kinds != "variant")])),
        "variant": float(np.mean(pred[kinds == "variant"])),
        "fpr": fpr,
        "fpr_hard": float(np.mean(pred[kinds == "locality"])),
        # Question level, whole index: does the question pull in any edit it is not about?
        "false_hit": float(np.mean(scores.wrong >= t)),
    }


def choose_threshold(scores: KeyScores, truth: np.ndarray, kinds: np.ndarray, max_fpr: float) -> float:
    """Lowest threshold (0.01 steps) keeping every false-positive measure <= max_fpr.

    The measures: FPR on all out-of-scope pairs, FPR on the hard negatives alone, and the share of
    questions that would pull in any wrong edit from an index holding all the edits.
    """
    for t in np.arange(0.30, 1.00, 0.01):
        m = measure(scores, float(t), truth, kinds)
        if max(m["fpr"], m["fpr_hard"], m["false_hit"]) <= max_fpr:
            return round(float(t), 2)
    return 1.0


def named_matrix(embedder: Embedder, edits: list[dict[str, str]], questions: list[Question]) -> np.ndarray:
    """(Q, N) which edits each question names, as the index's exact path decides it (longest mention wins)."""
    exact_index = MemoryIndex(embedder.dim, known=embedder.knows)
    exact_index.add_many(range(len(edits)), [e["subject"] for e in edits], [e["subject"] for e in edits],
                         embedder.embed([e["subject"] for e in edits]))
    named = np.zeros((len(questions), len(edits)), dtype=bool)
    for i, q in enumerate(questions):
        named[i, exact_index.exact_matches(q.text)[0]] = True
    return named


def compare_key_texts(embedder: Embedder, edits: list[dict[str, str]], questions: list[Question],
                      q_vecs: np.ndarray, named: np.ndarray, exact: np.ndarray,
                      max_fpr: float) -> dict[str, tuple[float, np.ndarray, KeyScores]]:
    """Prints each key-text option's figures at its lowest threshold meeting `max_fpr`; returns
    (threshold, key vectors, scores) by option."""
    truth = np.array([q.in_scope for q in questions])
    kinds = np.array([q.kind for q in questions])
    print(f"\nKey text options, embedding path alone; threshold = lowest with every FP measure <= "
          f"{max_fpr:.0%}\n(FPR: out-of-scope pairs; hard: locality pairs; false-hit: questions pulling "
          f"any wrong edit from an index of all {len(edits)} edits):")
    print(f"  {'key text':30s} {'thresh':>6s} {'recall':>7s} {'named':>6s} {'variant':>8s} {'FPR':>6s} "
          f"{'hard':>6s} {'false-hit':>9s} {'combined recall':>15s}")
    results: dict[str, tuple[float, np.ndarray, KeyScores]] = {}
    for name, make_key in KEY_OPTIONS.items():
        keys = embedder.embed([make_key(e["subject"], e["prompt"], e["target_new"]) for e in edits])
        scores = score_keys(q_vecs, keys, questions, named)
        thr = choose_threshold(scores, truth, kinds, max_fpr)
        m = measure(scores, thr, truth, kinds)
        combined = rates((scores.own >= thr) | exact, truth)[1]
        results[name] = (thr, keys, scores)
        print(f"  {name:30s} {thr:6.2f} {m['recall']:7.1%} {m['named']:6.1%} {m['variant']:8.1%} {m['fpr']:6.1%} "
              f"{m['fpr_hard']:6.1%} {m['false_hit']:9.1%} {combined:15.1%}")
    return results


def print_paths(scores: KeyScores, thr: float, questions: list[Question], exact: np.ndarray) -> None:
    """Precision, recall and false positives of the exact path, the embedding path and both, at the
    chosen and the shipped threshold; then a threshold sweep of the embedding path."""
    truth = np.array([q.in_scope for q in questions])
    kinds = np.array([q.kind for q in questions])
    named_q = truth & (kinds != "variant")
    for t in sorted({thr, SCOPE_THRESHOLD}):
        print(f"  at {t:.2f}:\n  {'path':16s} {'precision':>9s} {'recall':>7s} {'named':>6s} {'variant':>8s} "
              f"{'FPR':>6s} {'hard':>6s} {'false-hit':>9s}")
        emb = scores.own >= t
        for path, pred, false_hit in (("exact only", exact, 0.0),
                                      ("embedding only", emb, float(np.mean(scores.wrong >= t))),
                                      ("combined", exact | emb, float(np.mean(scores.wrong >= t)))):
            p, r, f = rates(pred, truth)
            print(f"  {path:16s} {p:9.1%} {r:7.1%} {float(np.mean(pred[named_q])):6.1%} "
                  f"{float(np.mean(pred[kinds == 'variant'])):8.1%} {f:6.1%} "
                  f"{float(np.mean(pred[kinds == 'locality'])):6.1%} {false_hit:9.1%}")
    print("  (named: in-scope questions naming the subject; variant: subject misspelt or surname alone;\n"
          "   false-hit of exact only: not counted, a question naming a subject is in its scope by definition)")
    print("  sweep (embedding only; recall / variant recall / hard FPR / false-hit):")
    for t in (0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8):
        m = measure(scores, t, truth, kinds)
        print(f"    {t:.2f}: {m['recall']:6.1%} {m['variant']:6.1%} {m['fpr_hard']:6.1%} {m['false_hit']:6.1%}")


def search_all(embedder: Embedder, edits: list[dict[str, str]], keys: np.ndarray, questions: list[Question],
               q_vecs: np.ndarray) -> None:
    """The real index with every edit in it, at the shipped threshold, searched the way the chat does."""
    index = MemoryIndex(embedder.dim, threshold=SCOPE_THRESHOLD, known=embedder.knows)
    index.add_many(range(len(edits)), [e["subject"] for e in edits],
                   [key_text_for(e["subject"], e["prompt"], e["target_new"]) for e in edits], keys)
    found, wrong_nn = [], []
    for q, vec in zip(questions, q_vecs, strict=True):
        hits = index.search(q.text, vec, k=4)
        if q.in_scope:
            found.append(any(h.edit_id == q.edit for h in hits))
        right = {q.edit} if q.in_scope else set()
        right |= {q.source} if q.source >= 0 else set()
        wrong_nn.append(any(not h.exact and h.edit_id not in right for h in hits))
    print(f"\nMemoryIndex.search(k=4) over all {len(edits)} edits at {SCOPE_THRESHOLD:.2f}: own edit returned "
          f"for {np.mean(found):.1%} of in-scope questions; {np.mean(wrong_nn):.1%} of all questions get a "
          f"wrong nearest-neighbour hit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=400, help="edits (records) to use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-fpr", type=float, default=0.02)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    embedder = Embedder.load()
    edits = load_edits(args.data, args.n, args.seed)
    questions = build_questions(edits, args.seed)
    truth = np.array([q.in_scope for q in questions])
    kinds = np.array([q.kind for q in questions])
    q_vecs = embedder.embed([q.text for q in questions])  # (Q, dim)
    named = named_matrix(embedder, edits, questions)
    exact = named[np.arange(len(questions)), [q.edit for q in questions]]
    print(f"embedder {embedder.name}; {len(edits)} edits from {args.data.name} (seed {args.seed}); "
          f"{int(truth.sum())} in-scope and {int((~truth).sum())} out-of-scope pairs")
    print("  " + ", ".join(f"{kind} {int(np.sum(kinds == kind))}" for kind in
                           ("prompt", "rephrase", "question", "variant", "locality", "other", "everyday")))
    results = compare_key_texts(embedder, edits, questions, q_vecs, named, exact, args.max_fpr)
    chosen = "subject (key_text_for)"
    thr, keys, scores = results[chosen]
    print(f"\nKey text in use: {chosen}; lowest threshold meeting the limits: {thr:.2f}; "
          f"SCOPE_THRESHOLD in kbchat/memory/calibration.py: {SCOPE_THRESHOLD:.2f}")
    print_paths(scores, thr, questions, exact)
    search_all(embedder, edits, keys, questions, q_vecs)
    slips_at_scale(args.data, embedder)
    print(f"({time.perf_counter() - start:.0f} s)")


def slips_at_scale(path: Path, embedder: Embedder) -> None:
    """The name path's slips with every subject of the file as an edit: how many prompts about one
    subject (each record's prompt and its locality prompt) a slip ties to another subject's edit."""
    records = json.loads(path.read_text())
    subjects = sorted({r["subject"] for r in records if subject_key(r["subject"])})
    slips = SlipIndex(embedder.knows)
    for i, subject in enumerate(subjects):
        slips.add(i, subject_key(subject))
    exact = {subject_key(s) for s in subjects}
    prompts = [p for r in records for p in (r["prompt"], r["locality_prompt"])]
    wrong = []
    for prompt in prompts:
        words = normalise_words(prompt)
        for n in range(1, 6):
            for start in range(len(words) - n + 1):
                gram = tuple(words[start:start + n])
                if gram not in exact and (found := slips.matches(gram)):
                    wrong.append((prompt, [subjects[i] for i in found]))
    print(f"\nSlips with all {len(subjects)} subjects of {path.name} as edits: {len(wrong)} of {len(prompts)} "
          f"prompts ({len(wrong) / len(prompts):.2%}) tie a word to an edit whose subject they do not name"
          + "".join(f"\n    {p!r} -> {s}" for p, s in wrong[:12]))


if __name__ == "__main__":
    main()
