"""The saved-conversation calls of the contract, on every implementation (tests/engines.py)."""

from __future__ import annotations

import threading

import pytest

from kbchat.conversations.records import Chat, ChatSummary
from kbchat.errors import ChatNotFound, KbchatError

EIFFEL = "Eiffel Tower → The Eiffel Tower is located in Rome"
QUESTION = "Where is the Eiffel Tower?"


def test_a_new_chat_keeps_questions_and_answers_in_order(service) -> None:
    assert service.chats() == []
    made = service.new_chat()
    assert isinstance(made, ChatSummary) and made.messages == 0 and made.title == ""
    first = service.say(made.id, "  Where is   the Eiffel Tower? ", max_new_tokens=4).result()
    second = service.say(made.id, "And the Louvre?", max_new_tokens=4).result()
    chat = service.chat(made.id)
    assert isinstance(chat, Chat)
    assert [m.role for m in chat.messages] == ["user", "assistant", "user", "assistant"]
    assert chat.messages[0].content == QUESTION  # white space folded, as it was answered
    assert (first.question_id, first.message_id) == (chat.messages[0].id, chat.messages[1].id)
    assert (second.question_id, second.message_id) == (chat.messages[2].id, chat.messages[3].id)
    assert chat.messages[1].reply_to == chat.messages[0].id and chat.messages[1].content == first.text
    assert chat.messages[1].model == service.info().model
    assert chat.summary.title == QUESTION and chat.summary.messages == 4
    assert Chat.from_json(chat.to_json()) == chat


def test_the_most_recently_used_chat_comes_first(service) -> None:
    older, newer = service.new_chat("older"), service.new_chat("newer")
    assert [c.id for c in service.chats()] == [newer.id, older.id]
    service.say(older.id, QUESTION, max_new_tokens=2).result()
    assert [c.title for c in service.chats()] == ["older", "newer"]


def test_rename_and_delete(service) -> None:
    chat = service.new_chat()
    service.say(chat.id, QUESTION, max_new_tokens=2).result()
    assert service.rename_chat(chat.id, "  Paris\nquestions ").title == "Paris questions"
    with pytest.raises(KbchatError, match="empty title"):
        service.rename_chat(chat.id, "   ")
    service.delete_chat(chat.id)
    assert service.chats() == []
    assert service.search_chats("Eiffel") == []
    for call in (lambda: service.chat(chat.id), lambda: service.delete_chat(chat.id),
                 lambda: service.rename_chat(chat.id, "x"), lambda: service.say(chat.id, QUESTION)):
        with pytest.raises(ChatNotFound):
            call()


def test_an_empty_question_is_refused_and_nothing_is_saved(service) -> None:
    chat = service.new_chat()
    with pytest.raises(KbchatError, match="empty question"):
        service.say(chat.id, "   ").result()
    assert service.chat(chat.id).messages == ()


def test_an_answer_records_the_edits_it_used_and_what_became_of_them(service) -> None:
    chat = service.new_chat()
    edit = service.edit(EIFFEL, audit="off")
    answer = service.say(chat.id, QUESTION, max_new_tokens=4).result()
    assert edit.id in answer.used_edits
    saved = service.chat(chat.id).messages[-1]
    (use,) = [u for u in saved.edits if u.id == edit.id]
    assert (use.kind, use.label, use.status, use.since) == ("memory", "Eiffel Tower → Rome", "active", None)
    assert saved.stale == ()
    service.revert(edit.id)
    saved = service.chat(chat.id).messages[-1]
    assert [u.status for u in saved.stale] == ["reverted"]
    assert "since reverted" in saved.stale[0].note() and f"#{edit.id}" in saved.stale[0].note()


def test_ask_again_keeps_both_answers(service) -> None:
    chat = service.new_chat()
    service.say(chat.id, QUESTION, max_new_tokens=4).result()
    question = service.chat(chat.id).messages[0]
    again = service.ask_again(chat.id, question.id, max_new_tokens=4).result()
    after = service.chat(chat.id)
    assert [m.role for m in after.messages] == ["user", "assistant", "assistant"]
    assert [m.id for m in after.answers_to(question.id)] == [after.messages[1].id, again.message_id]
    with pytest.raises(ChatNotFound):  # an answer is not a question
        service.ask_again(chat.id, after.messages[1].id)
    other = service.new_chat()
    with pytest.raises(ChatNotFound):  # nor is a question of another chat
        service.ask_again(other.id, question.id)


def test_search_finds_messages_in_any_chat(service) -> None:
    first, second = service.new_chat(), service.new_chat()
    service.say(first.id, QUESTION, max_new_tokens=2).result()
    service.say(second.id, "What is 100% of the Louvre_x?", max_new_tokens=2).result()
    hits = service.search_chats("eiffel TOWER")
    assert [(h.chat_id, h.role) for h in hits if h.role == "user"] == [(first.id, "user")]
    assert "Eiffel Tower" in hits[-1].snippet and hits[-1].title == QUESTION
    assert [h.chat_id for h in service.search_chats("100%")] [-1:] == [second.id]  # % is literal
    assert service.search_chats("0%of") == [] and service.search_chats("Louvre_") != []
    with pytest.raises(KbchatError, match="empty search"):
        service.search_chats("  ")


def test_a_cancelled_answer_keeps_what_was_said(service) -> None:
    chat = service.new_chat()
    cancel = threading.Event()
    stream = service.say(chat.id, QUESTION, max_new_tokens=8, cancel=cancel)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        cancel.set()
    messages = service.chat(chat.id).messages
    assert messages[0].content == QUESTION
    for _ in range(100):  # a host saves the partial answer once it sees the client hang up
        if not stream.answer.text or messages[-1].role == "assistant":
            break
        threading.Event().wait(0.05)
        messages = service.chat(chat.id).messages
    if stream.answer.text:  # what was shown is kept (a host may have generated a little more before it
        # saw the client hang up)
        assert messages[-1].role == "assistant" and messages[-1].content.startswith("".join(pieces).strip())


def test_weight_edits_are_part_of_the_provenance(service) -> None:
    if not service.capabilities().weight_edits:
        pytest.skip("no weight edits on this implementation")
    edit = service.edit("Colosseum → The Colosseum is located in Paris", method="rome", audit="off")
    chat = service.new_chat()
    answer = service.say(chat.id, "Where is the Louvre?", max_new_tokens=2).result()
    assert edit.id in answer.weight_edits
    uses = {u.id: u for u in service.chat(chat.id).messages[-1].edits}
    assert uses[edit.id].kind == "weight" and uses[edit.id].status == "active"
    service.revert(edit.id)
    assert service.chat(chat.id).messages[-1].stale[0].id == edit.id


def test_old_turns_are_left_out_when_the_context_is_full(service) -> None:
    chat = service.new_chat()
    filler = "Tell me what you know about the Eiffel Tower and its history. " * 26  # ~1,600 characters
    dropped = [service.say(chat.id, f"{n}: {filler}", max_new_tokens=2).result().dropped for n in range(8)]
    assert dropped[0] == 0 and dropped[-1] >= 1, dropped
    assert dropped == sorted(dropped)  # once the context is full, it stays full
    saved = [m.dropped for m in service.chat(chat.id).messages if m.role == "assistant"]
    assert saved == dropped
