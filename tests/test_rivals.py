"""The rival an edit is checked against is the model's own chat answer, its raw continuation second."""

from __future__ import annotations

import pytest

from kbchat.audit import plan_probes
from kbchat.audit.probes import CHAT_ANSWER, RAW_CONTINUATION, RELIABILITY
from kbchat.audit.rivals import chat_rival, raw_rival
from methods import EditRequest

EIFFEL = EditRequest("Eiffel Tower", "The {} is located in", "Rome", "the Champ")


@pytest.mark.parametrize(("answer", "rival"), [
    ("The Eiffel Tower is located in Paris, France.", "Paris"),
    ("It is located in Paris, the capital of France.", "Paris"),
    ("The Eiffel Tower stands in Paris.", "Paris"),
    ("Sure! The Eiffel Tower is located in the heart of Paris.", "heart of Paris"),
    ("I do not know.", None),
])
def test_the_chat_answers_object(answer: str, rival: str | None) -> None:
    assert chat_rival(answer, EIFFEL) == rival


def test_the_raw_continuations_first_phrase() -> None:
    assert raw_rival(" the Champ de la Corée, a park") == "the Champ de la Corée"
    assert raw_rival("   ") is None


def test_probes_use_the_chat_answer_and_add_the_raw_continuation_second() -> None:
    probes = plan_probes(EIFFEL, rivals={CHAT_ANSWER: "Paris", RAW_CONTINUATION: "the Champ de la Corée"})
    reliability = [p for p in probes if p.metric == RELIABILITY]
    assert [(p.old, p.rival) for p in reliability] == [
        ("Paris", CHAT_ANSWER), ("Paris", CHAT_ANSWER), ("the Champ de la Corée", RAW_CONTINUATION)]
    # Without a chat answer the request's own old answer stays, unlabelled.
    plain = [p for p in plan_probes(EIFFEL) if p.metric == RELIABILITY]
    assert {(p.old, p.rival) for p in plain} == {("the Champ", None)}
