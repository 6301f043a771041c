"""The service contract (kbchat/service.py), held against every implementation: the scripted fake,
the local engine on a tiny model, the remote client through a host, and the OpenAI-backend host.

What an implementation cannot do, it says in `capabilities()` and refuses with UnsupportedOperation;
everything else behaves the same everywhere (the fake included, so UI tests certify real behaviour).
"""

from __future__ import annotations

import threading

import pytest

from kbchat.errors import EditNotFound, KbchatError, ParseError, UnsupportedOperation
from kbchat.records import Answer, EditRecord, EngineInfo
from kbchat.service import Capabilities, ChatService

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
BERLIN = "Eiffel Tower → The Eiffel Tower is located in Berlin"
QUESTION = "Where is the Eiffel Tower?"


def test_is_a_chat_service_with_capabilities(service) -> None:
    assert isinstance(service, ChatService)
    caps = service.capabilities()
    assert isinstance(caps, Capabilities)
    assert caps.default_method in caps.methods
    assert Capabilities.from_json(caps.to_json()) == caps
    info = service.info()
    assert isinstance(info, EngineInfo)
    assert (info.active_memory_edits, info.active_weight_edits) == (0, 0)
    assert service.problems() == [] and service.verify() == []
    assert service.edits() == []


def test_ask_and_stream_agree(service) -> None:
    answer = service.ask(QUESTION, max_new_tokens=6)
    assert isinstance(answer, Answer) and answer.used_edits == ()
    stream = service.stream(QUESTION, max_new_tokens=6)
    pieces = list(stream)
    assert "".join(pieces).strip() == stream.answer.text == answer.text


def test_a_cancelled_stream_stops_and_keeps_what_it_had(service) -> None:
    cancel = threading.Event()
    stream = service.stream(QUESTION, max_new_tokens=40, cancel=cancel)
    seen = []
    for piece in stream:
        seen.append(piece)
        cancel.set()
    assert len(seen) == 1 and stream.answer is not None
    assert stream.answer.text == seen[0].strip()


def test_an_empty_question_is_refused(service) -> None:
    with pytest.raises(KbchatError, match="empty"):
        service.ask("   ")


def test_parse_splits_an_arrow_edit_and_refuses_junk(service) -> None:
    parsed = service.parse(EIFFEL)
    assert parsed.subject == "Eiffel Tower" and parsed.target.endswith("Rome")
    assert f"{parsed.prompt} {parsed.target}" == parsed.fact.rstrip(".")
    with pytest.raises(ParseError):
        service.parse("no arrow at all")
    assert service.edits() == []


def test_a_memory_edit_acts_in_scope_and_reverts(service) -> None:
    record = service.edit(EIFFEL, audit="off")
    assert isinstance(record, EditRecord)
    assert (record.status, record.kind, record.method) == ("active", "memory", service.capabilities().default_method)
    assert service.get_edit(record.id) == record or service.get_edit(record.id).id == record.id
    assert [r.id for r in service.edits(status="active")] == [record.id]
    assert service.info().active_memory_edits == 1
    assert record.id in service.ask(QUESTION, max_new_tokens=4).used_edits
    assert service.ask(QUESTION, memory=False, max_new_tokens=4).used_edits == ()
    reverted = service.revert(record.id)
    assert reverted.status == "reverted" and service.info().active_memory_edits == 0
    assert service.ask(QUESTION, max_new_tokens=4).used_edits == ()
    with pytest.raises(KbchatError, match="only active edits"):
        service.revert(record.id)


def test_a_newer_edit_supersedes_and_its_revert_revives(service) -> None:
    older = service.edit(EIFFEL, audit="off")
    newer = service.edit(BERLIN, audit="off")
    assert service.get_edit(older.id).status == "superseded"
    assert service.get_edit(older.id).superseded_by == newer.id
    assert service.ask(QUESTION, max_new_tokens=4).used_edits == (newer.id,)
    service.revert(newer.id)
    assert service.get_edit(older.id).status == "active"
    assert service.ask(QUESTION, max_new_tokens=4).used_edits == (older.id,)
    assert [r.status for r in service.edits()] == ["active", "reverted"]


def test_unknown_ids_methods_and_modes_are_refused(service) -> None:
    with pytest.raises(EditNotFound):
        service.get_edit(999)
    with pytest.raises(EditNotFound):
        service.revert(999)
    with pytest.raises(KbchatError, match="unknown method"):
        service.edit(EIFFEL, method="telepathy")
    with pytest.raises(KbchatError, match="audit"):
        service.edit(EIFFEL, audit="sometimes")
    assert service.edits() == []


def test_weight_edits_or_a_clear_refusal(service) -> None:
    caps = service.capabilities()
    if not caps.weight_edits:
        assert "rome" not in caps.methods
        with pytest.raises(UnsupportedOperation):
            service.edit(EIFFEL, method="rome")
        with pytest.raises(UnsupportedOperation):
            service.commit()
        assert service.edits() == []
        return
    record = service.edit(EIFFEL, method="rome", audit="off")
    assert (record.kind, record.status) == ("weight", "active")
    assert service.info().active_weight_edits == 1
    assert service.revert(record.id).status == "reverted"
    assert service.info().active_weight_edits == 0 and service.verify() == []


def test_commit_needs_memory_edits(service) -> None:
    expected = KbchatError if service.capabilities().weight_edits else UnsupportedOperation
    with pytest.raises(expected):
        service.commit()


def test_commit_records_one_weight_edit_and_retires_memory_edits(service) -> None:
    if not service.capabilities().weight_edits:
        pytest.skip("this implementation cannot commit (checked in test_weight_edits_or_a_clear_refusal)")
    memory = service.edit(EIFFEL, audit="off")
    try:
        batch, *retired = service.commit()
    except KbchatError as exc:  # the tiny model may fail commit's reliability check: nothing may change
        assert "reliability" in str(exc)
        assert service.get_edit(memory.id).status == "active" and len(service.edits()) == 1
        return
    assert (batch.kind, batch.method, batch.status) == ("weight", "memit", "active")
    assert [r.id for r in retired] == [memory.id] and retired[0].status == "committed"
    with pytest.raises(KbchatError, match="only active edits"):
        service.revert(memory.id)  # a committed edit lives on in the weights: revert the batch instead


def test_hyperparameters_are_checked_or_refused(service) -> None:
    caps = service.capabilities()
    method = "rome" if caps.weight_edits else caps.default_method
    with pytest.raises(KbchatError):
        service.edit(EIFFEL, method=method, hparams={"no_such_knob": 1})
    assert service.edits() == []


def test_audit_modes(service) -> None:
    record = service.edit(EIFFEL, audit="wait")
    if service.capabilities().audit:
        assert record.checks and {c.metric for c in record.checks} >= {"reliability", "locality"}
        assert {c.mode for c in record.checks} == {"teacher_forced", "generation"}
        assert "audit stopped" not in (record.notes or "")
    else:
        assert record.checks == ()
    assert service.edit(BERLIN, audit="off").checks == () or not service.capabilities().audit


def test_export_or_a_clear_refusal(service, tmp_path) -> None:
    if not service.capabilities().export:
        with pytest.raises(UnsupportedOperation):
            service.export(tmp_path / "out")
        return
    folder = service.export(tmp_path / "out")
    assert (folder / "config.json").is_file()
    with pytest.raises(KbchatError, match="not empty"):
        service.export(folder)
