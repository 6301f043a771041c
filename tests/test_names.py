"""Subject names written with a slip: the distance, the slip index (through the memory index, with the
real embedder's vocabulary), and the spelling the model is given."""

from __future__ import annotations

import os

import pytest

from kbchat.memory import Embedder, MemoryIndex, key_text_for
from kbchat.memory.names import MIN_SLIP_CHARS, SlipIndex, canonical_spelling, slip_distance

EDITS = {
    1: "Manuel Dorrego",
    2: "Quetzaltenango",
    3: "Iceland",
    4: "Eiffel Tower",
    5: "Kuala Langat",
    6: "Kuala Langkat",  # one slip from 5: each spelling is its own edit's
    7: "Renault 4",
    8: "Valencia",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return Embedder.load()


@pytest.fixture(scope="module")
def index(embedder: Embedder) -> MemoryIndex:
    index = MemoryIndex(embedder.dim, known=embedder.knows)
    keys = [key_text_for(s, "", "") for s in EDITS.values()]
    index.add_many(list(EDITS), list(EDITS.values()), keys, embedder.embed(keys))
    return index


def test_slip_distance_counts_one_edit_or_swap():
    assert slip_distance("dorrego", "drorego") == 1  # two neighbours swapped
    assert slip_distance("dorrego", "dorego") == 1 and slip_distance("dorrego", "dorrrego") == 1
    assert slip_distance("dorrego", "dorrega") == 1 and slip_distance("dorrego", "dorrego") == 0
    assert slip_distance("kitten", "sitting") == 2  # capped
    assert slip_distance("ab", "abcd") == 2


@pytest.mark.parametrize("question, expected", [
    ("Which language does Manuel Drorego speak?", [1]),
    ("What is the official language of Quetzatlenango?", [2]),
    ("Where is the Efifel Tower?", [4]),
    ("where is kuala lagnat?", [5]),
    ("Where is Kuala Langkat?", [6]),  # the exact spelling of edit 6, not a slip of edit 5
])
def test_a_name_with_one_slip_is_named(index: MemoryIndex, question: str, expected: list[int]):
    assert index.exact_matches(question)[0] == expected


@pytest.mark.parametrize("question", [
    "What is the capital of Ireland?",  # one letter from Iceland, but a real name
    "Who is Manuel Dorrito?",  # two slips
    "Where is the Eiffel Towers shop?",  # "towers" is a real word
    "Who produced the Renault 5?",  # another number: another car
    "What is the capital of the Valencian Community?",  # a changed ending makes another word
    "Who is Manuel Torrego?",  # nor is a changed first letter taken for a slip
])
def test_real_words_and_two_slips_are_not_slips(index: MemoryIndex, question: str):
    assert index.exact_matches(question)[0] == []


def test_removed_and_merged_keys(embedder: Embedder):
    slips = SlipIndex(embedder.knows)
    for i in range(600):  # enough to fold the pending entries into the sorted arrays
        slips.add(i, ("subject", f"number{i:04d}x"))
    slips.add(10_000, ("manuel", "dorrego"))
    assert slips.matches(("manuel", "drorego")) == {10_000}
    assert slips.matches(("subject", "nmuber0123x")) == {123}
    slips.remove(123)
    slips.remove(10_000)
    assert slips.matches(("subject", "nmuber0123x")) == set() and slips.matches(("manuel", "drorego")) == set()
    slips.add(7, ("short",))  # below MIN_SLIP_CHARS letters: no slips looked for
    assert len("short") < MIN_SLIP_CHARS and slips.matches(("shrot",)) == set()


def test_canonical_spelling(embedder: Embedder):
    spell = lambda text, *subjects: canonical_spelling(text, subjects, embedder.knows)  # noqa: E731
    assert spell("where is the efifel tower?", "Eiffel Tower") == "where is the Eiffel Tower?"
    assert spell("Which language does manuel drorego speak? Manuel Dorrego?", "Manuel Dorrego") == \
        "Which language does Manuel Dorrego speak? Manuel Dorrego?"
    assert spell("What is the capital of Ireland?", "Iceland") == "What is the capital of Ireland?"
    assert spell("Where is Quetzatlenango's cathedral?", "Quetzaltenango", "Eiffel Tower") == \
        "Where is Quetzaltenango's cathedral?"
    assert spell("Where is paris?", "Paris") == "Where is Paris?"  # case only: short names too
    assert spell("Where is Pariz?", "Paris") == "Where is Pariz?"  # a slip in a short name: not judged


def test_the_model_is_given_the_edits_spelling(tmp_path):
    from tests.engines import WordEmbedder, local_engine, save_tiny_llama
    from tests.tiny_models import one_thread

    with one_thread():
        engine = local_engine(save_tiny_llama(tmp_path / "tiny"), tmp_path, tmp_path / "ledger.db", WordEmbedder())
        try:
            record = engine.edit("Manuel Dorrego → Manuel Dorrego speaks French", method="serac", audit="off")
            history = [{"role": "user", "content": "Tell me about manuel dorrego."},
                       {"role": "assistant", "content": "manuel dorrego was a soldier."}]
            plan = engine.planner.plan("Which language does Manuel Drorego speak?", history=history)
            assert record.id in plan.used and record.id in plan.patches
            users = [m["content"] for m in plan.prompt.messages if m["role"] == "user"]
            assert users == ["Tell me about Manuel Dorrego.", "Which language does Manuel Dorrego speak?"]
            assistant = [m["content"] for m in plan.prompt.messages if m["role"] == "assistant"]
            assert assistant == ["manuel dorrego was a soldier."]  # the model's own words stay as they were
            other = engine.planner.plan("Which language does Manuela Dorregos speak?")  # two slips: not the edit
            assert record.id not in other.used
        finally:
            engine.close()
