"""Saved conversations in the TUI, against the scripted FakeChatService: reopening the last chat, the chat
list (new, switch, rename, delete), moving through messages (copy, correct, ask again), provenance and
stale answers, search, export, the empty state and help, questions queued while opening, turns left
out of the context, and service failures as notifications. Plus the pure helpers behind them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList

from kbchat.conversations.records import ChatMessage, EditUse, SearchHit
from kbchat.tui import KbchatApp
from kbchat.tui.chat_format import (
    chat_title,
    copied_notice,
    dropped_line,
    export_path,
    hit_row,
    provenance_content,
)
from kbchat.tui.chat_list import ChatListScreen
from kbchat.tui.correction import correction_line, first_sentence, guess_subject
from kbchat.tui.dialogs import ConfirmScreen, PromptScreen
from kbchat.tui.messages import EmptyState, UserMessage
from kbchat.tui.search import SearchScreen
from tests.fake_service import FakeChatService
from tests.test_tui import ANSWER, RecordingApp, answers, idle, messages, opened, submit, wait_for

pytestmark = pytest.mark.anyio

EIFFEL_Q = "Where is the Eiffel Tower?"
FRANCE_Q = "What is the capital of France?"
FRANCE_A = "The capital of France is Paris."


def questions(app: KbchatApp) -> list[str]:
    return [w.text for w in app.query(UserMessage)]


async def ask(pilot, text: str) -> None:
    await submit(pilot, text)
    await idle(pilot)


# -- pure helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("question, subject", [
    ("Where is the Eiffel Tower?", "Eiffel Tower"),
    ("Eiffel Tower: where is it?", "Eiffel Tower"),
    ("Who painted the Mona Lisa?", "Mona Lisa"),
    ("Tell me about the Statue of Liberty.", "Statue of Liberty"),
    ("Is Paris the capital of France?", "Paris"),  # the first of equally long names
    ("In 1889, what was built in Paris?", "Paris"),  # a number alone is no name
    ("When did Apollo 11 land?", "Apollo 11"),
    ("what is the capital of france?", "capital of france"),  # nothing capitalised: last noun phrase
    ("where is the eiffel tower located?", "eiffel tower"),
    ("Where is it?", ""),
])
def test_guess_subject(question: str, subject: str) -> None:
    assert guess_subject(question) == subject


def test_correction_line_takes_the_answers_first_sentence() -> None:
    assert first_sentence("The Eiffel Tower is in **Paris**. It was built in 1889.") == "The Eiffel Tower is in Paris"
    assert correction_line(EIFFEL_Q, ANSWER) == "/edit Eiffel Tower → The Eiffel Tower is located in Paris, France"
    # The question names nothing: the subject comes from the answer.
    assert correction_line("Where is it?", "The Louvre is in Paris.") == "/edit Louvre → The Louvre is in Paris"
    assert correction_line("?", "Yes.") == "/edit SUBJECT → Yes"  # nothing to go on: a placeholder


def _message(edits: tuple[EditUse, ...] = (), dropped: int = 0) -> ChatMessage:
    return ChatMessage(2, 1, "assistant", "x", datetime(2025, 1, 1), 1, "m", None, edits, dropped)


def test_provenance_lines() -> None:
    assert provenance_content(_message()).plain == "no edits"
    active = EditUse(3, "memory", "Eiffel Tower → Rome", "active")
    assert provenance_content(_message((active,))).plain == "memory: edit #3 (Eiffel Tower → Rome)"
    reverted = EditUse(3, "memory", "Eiffel Tower → Rome", "reverted")
    weight = EditUse(4, "weight", "Louvre → London", "active")
    assert provenance_content(_message((reverted, weight), dropped=2)).plain == (
        "⚠ answered with memory edit #3 (Eiffel Tower → Rome), since reverted · weights: edit #4 (Louvre → London)\n"
        "2 earlier turns were left out: they do not fit in the model's context")
    assert provenance_content(None, None, failed=True).plain == "(failed)"
    assert dropped_line(1) == "1 earlier turn was left out: it does not fit in the model's context"
    assert dropped_line(0) == ""


def test_list_rows_paths_and_notices(tmp_path: Path) -> None:
    assert chat_title(None) == "New chat"
    row = hit_row(SearchHit(1, "", 2, "assistant", "…in **Paris**, France."), "paris")
    assert row.plain == "Untitled chat\n  kbchat: …in Paris, France."
    assert export_path(3, "md", None, tmp_path) == tmp_path / "kbchat-chat-3.md"
    assert export_path(3, "json", "out.json", tmp_path) == tmp_path / "out.json"
    assert export_path(3, "json", str(tmp_path), Path("/elsewhere")) == tmp_path / "kbchat-chat-3.json"
    assert copied_notice("the answer", {"TERM_PROGRAM": "WezTerm"}) == ("Copied the answer to the clipboard",
                                                                      "information")
    notice, severity = copied_notice("the answer", {"TERM_PROGRAM": "Apple_Terminal"})
    assert notice.startswith("Copied the answer, but macOS Terminal ignores") and severity == "warning"
    assert "set-clipboard" in copied_notice("x", {"TMUX": "/tmp/tmux-1/default"})[0]
    assert "if your terminal does not support it" in copied_notice("x", {})[0]


# -- saved chats ------------------------------------------------------------------------------------------


async def test_questions_go_to_the_saved_chat_and_the_last_one_reopens(tmp_path: Path) -> None:
    db = str(tmp_path / "chats.db")
    fake = FakeChatService(chats_db=db)
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        assert fake.chats() == []  # starting makes no chat
        await ask(pilot, EIFFEL_Q)
        await ask(pilot, FRANCE_Q)
        assert [c for c in fake.calls if c[0] == "say"] == [("say", 1, EIFFEL_Q), ("say", 1, FRANCE_Q)]
        assert app.chat.chat_id == 1 and "Where is the Eiffel Tower? · chat #1" in app.chat.prompt.border_title
    assert fake.closed

    again = FakeChatService(chats_db=db)
    app = RecordingApp(again.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        assert app.chat.chat_id == 1
        assert questions(app) == [EIFFEL_Q, FRANCE_Q]
        assert [a.text for a in answers(app)] == [ANSWER, FRANCE_A]
        assert all(a.message_id is not None for a in answers(app))
        assert not app.query(EmptyState)
        # The next question carries the reopened conversation (the service gives it to the model).
        await ask(pilot, "And the Louvre?")
        stream = [c for c in again.calls if c[0] == "stream"][-1]
        assert [m["content"] for m in stream[2]] == [EIFFEL_Q, ANSWER, FRANCE_Q, FRANCE_A]
        assert len(again.chats()) == 1


async def test_new_switch_rename_and_delete(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await submit(pilot, "/new")
        await pilot.pause()
        assert app.query(EmptyState) and not questions(app) and app.chat.chat_id is None
        await ask(pilot, FRANCE_Q)
        assert app.chat.chat_id == 2 and len(fake.chats()) == 2

        # The list: the chat shown is marked; Enter on the other opens it.
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen) and app.screen.chats)
        screen = app.screen
        assert [s.id for s in screen.chats] == [2, 1]
        assert str(screen.query_one(OptionList).get_option_at_index(0).prompt).startswith("● What is the capital")
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.chat.chat_id == 1 and questions(app) == [EIFFEL_Q])

        await submit(pilot, "/rename Paris trip")
        await wait_for(pilot, lambda: fake.chat(1).summary.title == "Paris trip")
        await wait_for(pilot, lambda: app.chat.prompt.border_title.startswith("Paris trip · chat #1"))

        # Rename from the list: r asks for the title (prefilled), Enter renames.
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen) and app.screen.chats)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, PromptScreen))
        field = app.screen.query_one(Input)
        assert field.value == "Paris trip"
        field.value = "Eiffel"
        await pilot.press("enter")
        await wait_for(pilot, lambda: fake.chat(1).summary.title == "Eiffel")
        await pilot.press("escape")  # closing the list shows the new title
        await wait_for(pilot, lambda: app.chat.prompt.border_title.startswith("Eiffel · chat #1"))


async def test_delete_asks_first(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await submit(pilot, "/delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Delete chat #1 “Where is the Eiffel Tower?” and its 2 messages?" in str(
            app.screen.query_one("#dialog-body").content)
        await pilot.press("n")  # cancelled: nothing changes
        await pilot.pause()
        assert [c.id for c in fake.chats()] == [1] and questions(app) == [EIFFEL_Q]
        await submit(pilot, "/delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.chat.chat_id is None and app.query(EmptyState))
        assert fake.chats() == []
        assert "Deleted chat #1 “Where is the Eiffel Tower?”" in messages(app)

        # From the list, deleting the chat shown leaves a new chat on screen.
        await ask(pilot, FRANCE_Q)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen) and app.screen.chats)
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen))
        assert len(fake.chats()) == 1
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen) and app.screen.chats == ())
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.chat.chat_id is None and app.query(EmptyState))


# -- search and export --------------------------------------------------------------------------------------


async def test_search_opens_the_chat_at_the_message(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await ask(pilot, FRANCE_Q)
        await submit(pilot, "/new")
        await ask(pilot, "Tell me about the Colosseum")
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: isinstance(app.screen, SearchScreen))
        await pilot.press(*"eiffel")
        await wait_for(pilot, lambda: app.screen.hits)
        assert [(h.chat_id, h.role) for h in app.screen.hits] == [(1, "assistant"), (1, "user")]
        await pilot.press("enter", "enter")  # to the results, then open the first
        await wait_for(pilot, lambda: app.chat.chat_id == 1 and app.chat.log_view.selected is not None)
        log = app.chat.log_view
        assert log.has_focus and log.selected.message_id == 2 and log.selected.text == ANSWER
        assert questions(app) == [EIFFEL_Q, FRANCE_Q]

        await submit(pilot, "/search nothing like this")
        await wait_for(pilot, lambda: isinstance(app.screen, SearchScreen) and app.screen.searched)
        assert "No message contains “nothing like this”." in str(app.screen.query_one("#search-summary").content)
        await pilot.press("escape")
        assert app.chat.chat_id == 1


async def test_export_markdown_and_json(fake: FakeChatService, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/export md")
        await wait_for(pilot, lambda: messages(app, "warning"))
        assert messages(app, "warning") == ["nothing to export yet: this chat is saved when you ask a question"]
        await ask(pilot, EIFFEL_Q)
        await submit(pilot, "/export md")
        md = tmp_path / "kbchat-chat-1.md"
        await wait_for(pilot, lambda: f"Exported chat #1 as Markdown to {md}" in messages(app))
        text = md.read_text(encoding="utf-8")
        assert text.startswith("# Where is the Eiffel Tower?\n")
        assert "**You**" in text and ANSWER in text and "> model fake-lm-135M" in text
        await submit(pilot, "/export json saved/chat.json")  # no such folder: said, not raised
        await wait_for(pilot, lambda: messages(app, "error"))
        assert messages(app, "error")[0].startswith("FileNotFoundError")
        await submit(pilot, "/export json")
        path = tmp_path / "kbchat-chat-1.json"
        await wait_for(pilot, lambda: f"Exported chat #1 as JSON to {path}" in messages(app))
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["format"] == "kbchat-chat/1" and data["summary"]["id"] == 1
        assert [m["content"] for m in data["messages"]] == [EIFFEL_Q, ANSWER]


async def test_chat_commands_in_the_palette_and_keys(fake: FakeChatService, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"export this chat as json")
        await pilot.pause(0.2)  # the palette searches in the background
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "kbchat-chat-1.json").exists())
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"list the saved chats")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen))
        await pilot.press("n")  # a new chat, from the list
        await wait_for(pilot, lambda: app.screen is app.screen_stack[0] and app.chat.chat_id is None)
        await ask(pilot, FRANCE_Q)
        await pilot.press("ctrl+n")  # and from anywhere in the chat
        await pilot.pause()
        assert app.chat.chat_id is None and app.query(EmptyState)
        await submit(pilot, "/chats")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen) and app.screen.chats)
        assert len(app.screen.chats) == 2
