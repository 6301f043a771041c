"""The conversation keeper's pieces: turns after "ask again", fitting history into a context."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from kbchat.conversations.export import provenance_line, render
from kbchat.conversations.keeper import as_history, char_budget, fit, turns
from kbchat.conversations.records import Chat, ChatMessage, ChatSummary, EditUse
from kbchat.ledger.chats import snippet

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def message(id: int, role: str, content: str, reply_to: int | None = None, **kw) -> ChatMessage:
    return ChatMessage(id, 1, role, content, T, reply_to, **kw)


def test_turns_pair_each_question_with_its_latest_answer() -> None:
    messages = [message(1, "user", "q1"), message(2, "assistant", "a1", 1), message(3, "user", "q2"),
                message(4, "assistant", "a2", 3), message(5, "assistant", "a1 again", 1), message(6, "user", "q3")]
    assert turns(messages) == [("q1", "a1 again"), ("q2", "a2"), ("q3", None)]
    assert as_history([("q1", "a1"), ("q2", None)]) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]


def test_fit_drops_the_oldest_turns_first() -> None:
    earlier = [("a" * 10, "b" * 10), ("c" * 10, "d" * 10), ("e" * 10, "f" * 10)]
    assert fit(earlier, "q" * 5, char_budget(100), None) == (earlier, 0)
    assert fit(earlier, "q" * 5, char_budget(45), None) == (earlier[1:], 1)
    assert fit(earlier, "q" * 5, char_budget(25), None) == (earlier[2:], 2)
    assert fit(earlier, "q" * 50, char_budget(25), None) == ([], 3)  # the question alone is too long


def test_snippet_centres_the_match() -> None:
    text = "word " * 30 + "Eiffel Tower" + " more" * 30
    cut = snippet(text, "eiffel tower")
    assert "Eiffel Tower" in cut and cut.startswith("…") and cut.endswith("…") and len(cut) < 110
    assert snippet("short Eiffel", "eiffel") == "short Eiffel"


def test_markdown_export_shows_provenance_and_asked_again() -> None:
    summary = ChatSummary(1, "Towers", T, T, 3)
    stale = EditUse(3, "memory", "Eiffel Tower → Rome", "reverted")
    chat = Chat(summary, (message(1, "user", "Where is the Eiffel Tower?"),
                          message(2, "assistant", "In Paris.", 1, model="m"),
                          message(3, "assistant", "In Rome.", 1, model="m", edits=(stale,), weights="ab" * 32)))
    text = render(chat, "md")
    assert text.startswith("# Towers\n") and "In Paris." in text and "no edits used" in text
    assert "asked again" in text and "answered with memory edit #3 (Eiffel Tower → Rome), since reverted" in text
    assert provenance_line(chat.messages[2]).endswith("weights abababababab")
    assert Chat.from_json(json.loads(render(chat, "json"))) == chat
