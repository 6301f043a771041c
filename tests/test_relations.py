"""The audit's relation table (kbchat/audit/data/relations.json): rephrasings and questions for an edit's prompt."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kbchat.audit.relations import (
    RELATIONS,
    _normalise,
    neighbors_template,
    paraphrases,
    questions,
    relation_of,
)
from methods.requests import EditRequest

DATA = Path("/work/shared/data")


def test_table_shape():
    assert len(RELATIONS) >= 20
    assert len({r.name for r in RELATIONS}) == len(RELATIONS)
    for relation in RELATIONS:
        assert len(relation.rephrasings) >= 3, relation.name
        assert len(relation.questions) >= 2, relation.name
        assert any("?" in t for t in relation.rephrasings[:2]), f"{relation.name}: no early question form"
        for template in relation.patterns + relation.rephrasings + relation.questions:
            assert template.count("{}") == 1, template
        assert all(q.endswith("?") for q in relation.questions), relation.name


def test_patterns_belong_to_one_relation():
    owners = Counter(_normalise(p) for r in RELATIONS for p in r.patterns)
    assert [p for p, n in owners.items() if n > 1] == []


@pytest.mark.parametrize(
    ("prompt", "subject", "relation"),
    [
        ("{} is located in", "Eiffel Tower", "location"),
        ("{} is in", "Louvre", "location"),
        ("The capital of {} is", "France", "capital"),
        ("{} was founded by", "Apple", "founder"),
        ("{} is a citizen of", "Angela Merkel", "citizenship"),
        ("The mother tongue of {} is", "Danielle Darrieux", "native language"),
        ("{} works in the field of", "Marie Curie", "field of work"),
        ("{} plays the", "Toko Yasuda", "instrument"),
        ("{} was born in", "Mozart", "birthplace"),
        ("{} is affiliated with the religion of", "Edwin of Northumbria", "religion"),
        ("{}'s headquarters are in", "Nokia", "headquarters"),
        ("{} was created by", "Linux", "creator"),
        ("{} is owned by", "YouTube", "owner"),
        ("The official language of {} is", "Brazil", "official language"),
        ("What is the twin city of {}? It is", "Lyon", "twin city"),
        ("{}, which is located in", "Autonomous University of Madrid", "location"),
        ("The official religion of {} is", "Edwin of Northumbria", "religion"),
        ("Which position does {} play? They play as", "Thierry Henry", "position played"),
        ("{} premiered on", "Friends", "original network"),
    ],
)
def test_relations_are_recognised(prompt, subject, relation):
    request = EditRequest(subject, prompt, "X")
    assert relation_of(request).name == relation


def test_matching_tolerates_case_spacing_punctuation_and_articles():
    assert relation_of(EditRequest("Eiffel Tower", "The Eiffel Tower  is located in ", "Rome")).name == "location"
    assert relation_of(EditRequest("Netherlands", "The capital of the {} is", "Utrecht")).name == "capital"
    assert relation_of(EditRequest("Oslo", "Oslo\u2019s capital,", "X")).name == "capital"
    assert relation_of(EditRequest("Eiffel Tower", "Where is the Eiffel Tower?", "Rome")).name == "location"


def test_rephrasings_keep_the_article_with_the_subject():
    request = EditRequest("Eiffel Tower", "The {} is located in", "Rome")
    assert paraphrases(request, n=3) == [
        "Where is the Eiffel Tower? It is located in",
        "The Eiffel Tower can be found in",
        "The Eiffel Tower, which is located in",
    ]
    assert questions(request) == ["Where is the Eiffel Tower?", "Where is the Eiffel Tower located?"]


def test_subject_is_kept_verbatim():
    request = EditRequest("iPhone", "iPhone is produced by", "Nokia")
    found = paraphrases(request, n=6)
    assert len(found) == 6 and all("iPhone" in p for p in found)
    assert "Which company makes iPhone? It is made by" in found
    assert questions(request)[0] == "Who makes iPhone?"


def test_paraphrases_skip_the_prompt_itself_and_respect_n():
    request = EditRequest("Danielle Darrieux", "The mother tongue of {} is", "English")
    found = paraphrases(request, n=10)
    assert request.text not in found
    assert len(found) == len(set(found)) == 8  # 3 relation wordings (one is the prompt) + 5 generic
    assert paraphrases(request) == found[:3]
    assert found[0] == "What is the native language of Danielle Darrieux? It is"
    assert paraphrases(request, n=0) == []
    with pytest.raises(ValueError):
        paraphrases(request, n=-1)


def test_unknown_relation_falls_back_to_generic_wordings():
    request = EditRequest("Toko Yasuda", "Toko Yasuda, the", "piano")
    assert relation_of(request) is None
    assert paraphrases(request) == [
        "In fact, Toko Yasuda, the",
        "To be precise, Toko Yasuda, the",
        "What about Toko Yasuda? Toko Yasuda, the",
    ]
    request = EditRequest("Eiffel Tower", "The Eiffel Tower was painted by", "Monet")
    assert paraphrases(request, n=3) == [
        "In fact, the Eiffel Tower was painted by",
        "To be precise, the Eiffel Tower was painted by",
        "What about the Eiffel Tower? The Eiffel Tower was painted by",
    ]
    assert all("The Eiffel Tower was painted by" in q for q in questions(request))
    assert neighbors_template(request) is None


def test_neighbors_template_probes_other_subjects():
    request = EditRequest("Eiffel Tower", "The {} is in", "Rome")
    template = neighbors_template(request)
    assert template == "{} is located in"
    assert template.format("Big Ben") == "Big Ben is located in"
    assert neighbors_template(EditRequest("France", "France's capital is", "Lyon")) == "The capital of {} is"


@pytest.mark.skipif(not DATA.is_dir(), reason="the shared benchmark data is not on this machine")
def test_most_counterfact_prompts_are_recognised():
    import json

    records = json.loads((DATA / "counterfact/counterfact-val.json").read_text(encoding="utf-8"))
    requests = [EditRequest(r["subject"], r["prompt"], r["target_new"]) for r in records]
    recognised = sum(relation_of(r) is not None for r in requests)
    assert recognised / len(requests) > 0.9
    for request in requests[:200]:
        assert all(request.subject in p for p in paraphrases(request, n=4))
