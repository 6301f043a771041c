"""Benchmark loaders: the shared data files, hand-written records of each layout, and broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbchat.evaluation.datasets import DatasetError, EditCase, UnusableRecord, detect_layout, load_cases
from methods.requests import EditRequest

DATA = Path("/work/shared/data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="the shared benchmark data is not on this machine")

ROME_RECORD = {
    "case_id": 0,
    "pararel_idx": 2796,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
        "subject": "Danielle Darrieux",
    },
    "paraphrase_prompts": ["Danielle Darrieux, a native", "Danielle Darrieux spoke the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "Michel Rocard is a native speaker of"],
    "attribute_prompts": ["Barack Obama, speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}
FLAT_RECORD = {
    "case_id": 42,
    "prompt": "The profession of Arun Nehru is",
    "target_new": "actor",
    "subject": "Arun Nehru",
    "ground_truth": "politician",
    "rephrase_prompt": "Arun Nehru is known for",
    "locality_prompt": "George Washington's profession is a",
    "locality_ground_truth": "politician",
}
ZSRE_RECORD = {
    "subject": "UniFirst",
    "src": "What is the product made by UniFirst?",
    "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?",
    "alt": "unmanned aircraft",
    "answers": ["uniform", "uniforms"],
    "loc": "nq question: john goodman's character in the big lebowski",
    "loc_ans": "Walter Sobchak",
}


def write(tmp_path: Path, records, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# The shared files


@needs_data
def test_counterfact_flattened_file():
    cases = load_cases(DATA / "counterfact/counterfact-val.json", limit=3)
    assert len(cases) == 3
    first = cases[0]
    assert first == EditCase(
        case_id="10",
        request=EditRequest("BBC One", "BBC One, by", "Sega", target_true="BBC"),
        paraphrases=("BBC One is my favorite product out of everything owned by",),
        neighborhood=(("BBC Radio, by", "BBC"),),
    )
    assert all(c.request.subject in c.request.text for c in cases)


@needs_data
def test_counterfact_rome_file():
    cases = load_cases(DATA / "counterfact/counterfact-rome-format-sample5.json")
    assert len(cases) == 5
    first = cases[0]
    assert first.request == EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English", "French")
    assert first.request.text == "The mother tongue of Danielle Darrieux is"
    assert len(first.paraphrases) == 2 and len(first.neighborhood) == 10
    assert {answer for _, answer in first.neighborhood} == {"French"}
    assert first.generation_prompts and first.attribute_prompts
    assert all("{}" in c.request.prompt and c.request.target_true for c in cases)


@needs_data
def test_zsre_file():
    cases = load_cases(DATA / "zsre/zsre-train-1k.json", limit=3)
    first = cases[0]
    assert first.request == EditRequest(
        "UniFirst", "What is the product made by UniFirst?", "unmanned aircraft", target_true="uniform"
    )
    assert first.paraphrases == ("What will be the product of UniFirst?",)
    assert first.neighborhood == (("john goodman's character in the big lebowski", "Walter Sobchak"),)
    assert not any(prompt.startswith("nq question") for c in cases for prompt, _ in c.neighborhood)


@needs_data
def test_zsre_file_has_records_without_a_target():
    path = DATA / "zsre/zsre-train-1k.json"
    with pytest.raises(UnusableRecord, match=r"record 534: field 'alt' is empty.*skip_unusable=True"):
        load_cases(path)
    cases = load_cases(path, skip_unusable=True)
    assert len(cases) == 998
    assert len(load_cases(path, limit=600, skip_unusable=True)) == 600


# ----------------------------------------------------------------------------------------------
# Hand-written records


def test_rome_layout(tmp_path):
    (case,) = load_cases(write(tmp_path, [ROME_RECORD]))
    assert case.case_id == "0"
    assert case.request.target == "English" and case.request.target_true == "French"
    assert case.neighborhood == (
        ("The mother tongue of Léon Blum is", "French"),
        ("Michel Rocard is a native speaker of", "French"),
    )
    assert case.attribute_prompts == ("Barack Obama, speaker of",)
    assert case.generation_prompts == ("Danielle Darrieux's mother tongue is",)


def test_flat_layout_and_json_lines(tmp_path):
    second = {**FLAT_RECORD, "case_id": 43, "subject": "Nehru", "prompt": "Nehru works as"}
    lines = json.dumps(FLAT_RECORD) + "\n\n" + json.dumps(second) + "\n"
    cases = load_cases(write(tmp_path, lines, "data.jsonl"))
    assert [c.case_id for c in cases] == ["42", "43"]
    assert cases[0].request == EditRequest("Arun Nehru", "The profession of Arun Nehru is", "actor", "politician")
    assert cases[0].paraphrases == ("Arun Nehru is known for",)
    assert cases[0].neighborhood == (("George Washington's profession is a", "politician"),)
    assert cases[1].request.subject == "Nehru"


def test_easyedit_portability_and_list_fields(tmp_path):
    record = {
        "prompt": "The mother tongue of Danielle Darrieux is",
        "subject": "Danielle Darrieux",
        "target_new": "English",
        "rephrase_prompt": ["Danielle Darrieux, a native", "Danielle Darrieux spoke"],
        "locality_prompt": ["Léon Blum spoke", "Rocard spoke"],
        "locality_ground_truth": [["French", "français"], "French"],
        "portability": {"New Question": "Which country's language does Danielle Darrieux speak natively?",
                        "New Answer": "United Kingdom"},
    }
    (case,) = load_cases(write(tmp_path, [record]))
    assert case.case_id == "0"  # no case_id: the record's index
    assert case.request.target_true is None
    assert case.paraphrases == ("Danielle Darrieux, a native", "Danielle Darrieux spoke")
    assert case.neighborhood == (("Léon Blum spoke", "French"), ("Rocard spoke", "French"))
    assert case.portability == (("Which country's language does Danielle Darrieux speak natively?", "United Kingdom"),)


def test_knowedit_portability_and_locality(tmp_path):
    record = {
        "subject": "Danielle Darrieux",
        "prompt": "The mother tongue of Danielle Darrieux is",
        "target_new": "English",
        "ground_truth": ["French"],
        "rephrase": "Danielle Darrieux's native language is",
        "portability": {
            "Reasoning": [{"prompt": "The country of Danielle Darrieux's mother tongue is",
                           "ground_truth": [["United Kingdom", "UK"]]}],
            "Subject_Aliasing": [{"prompt": ["Darrieux's mother tongue is", "D. Darrieux's mother tongue is"],
                                  "ground_truth": [["English"]]}],
            "Logical_Generalization": [],
        },
        "locality": {"Relation_Specificity": [{"prompt": "Danielle Darrieux was born in",
                                               "ground_truth": [["Bordeaux"]]}]},
    }
    (case,) = load_cases(write(tmp_path, [record]))
    assert case.request.target_true == "French"
    assert case.paraphrases == ("Danielle Darrieux's native language is",)
    assert case.portability == (
        ("The country of Danielle Darrieux's mother tongue is", "United Kingdom"),
        ("Darrieux's mother tongue is", "English"),
        ("D. Darrieux's mother tongue is", "English"),
    )
    assert case.neighborhood == (("Danielle Darrieux was born in", "Bordeaux"),)


def test_zsre_layout(tmp_path):
    record = {**ZSRE_RECORD, "portability": {"New Question": "Who makes unmanned aircraft for UniFirst?",
                                             "New Answer": "UniFirst"}}
    (case,) = load_cases(write(tmp_path, [record]))
    assert case.request.target_true == "uniform"
    assert case.neighborhood == (("john goodman's character in the big lebowski", "Walter Sobchak"),)
    assert case.portability == (("Who makes unmanned aircraft for UniFirst?", "UniFirst"),)


def test_detect_layout():
    assert detect_layout(ROME_RECORD) == "counterfact-rome"
    assert detect_layout(FLAT_RECORD) == "easyedit"
    assert detect_layout(ZSRE_RECORD) == "zsre-mend"
    assert detect_layout({"question": "?"}) is None


def test_limit_takes_the_first_records(tmp_path):
    records = [{**FLAT_RECORD, "case_id": i} for i in range(5)]
    assert [c.case_id for c in load_cases(write(tmp_path, records), limit=2)] == ["0", "1"]
    assert len(load_cases(write(tmp_path, records), limit=50)) == 5


# ----------------------------------------------------------------------------------------------
# Broken input: one DatasetError whose one-line message names the file, the record and the field


def assert_one_line_error(path: Path, *fragments: str, limit: int | None = None, kind=DatasetError) -> None:
    with pytest.raises(kind) as caught:
        load_cases(path, limit=limit)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_field_names_record_case_id_and_field(tmp_path):
    broken = {k: v for k, v in FLAT_RECORD.items() if k != "target_new"}
    broken["case_id"] = 7
    path = write(tmp_path, [FLAT_RECORD, {**FLAT_RECORD, "target_new": None, "case_id": 7}])
    assert_one_line_error(path, "record 1", "case_id 7", "'target_new'")


def test_missing_nested_field(tmp_path):
    record = json.loads(json.dumps(ROME_RECORD))
    del record["requested_rewrite"]["target_new"]["str"]
    assert_one_line_error(write(tmp_path, [record]), "record 0", "case_id 0", "requested_rewrite.target_new")
    record["requested_rewrite"] = "oops"
    assert_one_line_error(write(tmp_path, [record]), "'requested_rewrite' should be an object")


def test_wrong_types(tmp_path):
    assert_one_line_error(write(tmp_path, [{**FLAT_RECORD, "prompt": ["a", "b"]}]), "'prompt' should be a string")
    assert_one_line_error(write(tmp_path, [FLAT_RECORD, "text"]), "record 1", "expected a JSON object")
    paired = {**FLAT_RECORD, "locality_prompt": ["a", "b"], "locality_ground_truth": ["x"]}
    assert_one_line_error(write(tmp_path, [paired]), "'locality_ground_truth' should be a list as long as")
    assert_one_line_error(write(tmp_path, [{**FLAT_RECORD, "rephrase_prompt": [3.5, None]}]), "rephrase_prompt[1]")


def test_neighbourhood_without_true_target(tmp_path):
    record = json.loads(json.dumps(ROME_RECORD))
    del record["requested_rewrite"]["target_true"]
    assert_one_line_error(write(tmp_path, [record]), "neighborhood_prompts need")


def test_unknown_layout_names_the_keys(tmp_path):
    assert_one_line_error(write(tmp_path, [{"question": "q", "answer": "a"}]), "unknown layout", "'answer'", "'question'")


def test_unusable_edit(tmp_path):
    record = {**FLAT_RECORD, "prompt": "The profession of someone else is"}
    assert_one_line_error(write(tmp_path, [record]), "case_id 42", "names neither", kind=UnusableRecord)
    assert_one_line_error(write(tmp_path, [{**ZSRE_RECORD, "alt": " "}]), "'alt' is empty", kind=UnusableRecord)
    with pytest.raises(DatasetError, match="none of the 1 records"):
        load_cases(write(tmp_path, [{**ZSRE_RECORD, "alt": ""}]), skip_unusable=True)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("  \n", "empty"),
        ("[]", "no records"),
        ('[{"a": 1},', "invalid JSON at line 1"),
        ('{"a": 1}\n{"b": ', "line 2"),
        ('"just a string"', "record 0: expected a JSON object"),
    ],
)
def test_unreadable_files(tmp_path, text, fragment):
    assert_one_line_error(write(tmp_path, text), fragment)


def test_bad_limit_and_missing_file(tmp_path):
    path = write(tmp_path, [FLAT_RECORD])
    assert_one_line_error(path, "limit must be positive", limit=0)
    assert_one_line_error(path, "limit must be positive", limit=-3)
    assert_one_line_error(tmp_path / "absent.json", "cannot read")


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError) and issubclass(UnusableRecord, DatasetError)
