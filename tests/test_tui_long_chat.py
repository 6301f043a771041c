"""A long saved chat in the TUI: only its last messages are mounted when it opens; earlier ones come in
as the user moves or scrolls up to them, all of them with Home, and a search hit far back is mounted
and selected."""

from __future__ import annotations

import pytest

from kbchat.tui.message_nav import CHUNK, MAX_MOUNTED, WINDOW, EarlierNote, LaterNote
from kbchat.tui.messages import AnswerMessage, UserMessage
from tests.fake_service import FakeChatService
from tests.test_tui import RecordingApp, opened, wait_for

pytestmark = pytest.mark.anyio
PAIRS = 100  # 200 messages


@pytest.fixture
def long_chat() -> FakeChatService:
    fake = FakeChatService()
    chat = fake.new_chat("long")
    for i in range(PAIRS):
        fake.say(chat.id, f"Question {i} about the Eiffel Tower").result()
    return fake


def mounted(app) -> list:
    return list(app.chat.log_view.messages())


async def test_a_long_chat_mounts_its_last_messages_then_earlier_ones(long_chat) -> None:
    app = RecordingApp(long_chat.opener())
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        await wait_for(pilot, lambda: len(mounted(app)) == WINDOW)
        log = app.chat.log_view
        assert len(log.pending) == 2 * PAIRS - WINDOW
        assert f"{2 * PAIRS - WINDOW} earlier messages" in str(app.query_one(EarlierNote).render())
        assert isinstance(mounted(app)[-1], AnswerMessage) and "Paris" in mounted(app)[-1].text
        await pilot.press("up")  # into the messages, the last selected
        for _ in range(WINDOW):
            await pilot.press("k")
        # past the first mounted message: the next chunk came in and the selection moved on
        assert len(mounted(app)) == WINDOW + CHUNK and log.selected is mounted(app)[CHUNK - 1]
        await pilot.press("home")  # the chat's first messages, at most MAX_MOUNTED of them
        await wait_for(pilot, lambda: len(mounted(app)) == MAX_MOUNTED)
        assert not log.pending and not app.query(EarlierNote) and log.detached and app.query(LaterNote)
        assert isinstance(log.selected, UserMessage) and log.selected.text == "Question 0 about the Eiffel Tower"
        await pilot.press("end")  # the latest again: the chat is shown anew
        await wait_for(pilot, lambda: not log.detached and len(mounted(app)) == WINDOW)
        assert not app.query(LaterNote)


async def test_reading_far_back_keeps_a_bounded_number_mounted(long_chat) -> None:
    app = RecordingApp(long_chat.opener())
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        await wait_for(pilot, lambda: len(mounted(app)) == WINDOW)
        log = app.chat.log_view
        await pilot.press("up")
        for _ in range(180):
            await pilot.press("k")
        assert len(mounted(app)) <= MAX_MOUNTED and log.detached and app.query(LaterNote)
        # 180 steps up from the last of 200 messages: the answer to question 9
        assert isinstance(log.selected, AnswerMessage)
        assert log.question_of(log.selected).text == "Question 9 about the Eiffel Tower"
        # a question typed while reading back: the latest messages come back, then it is asked
        app.chat.prompt.value = "Where is the Louvre?"
        app.chat.prompt.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: not log.detached and mounted(app)[-2].text == "Where is the Louvre?")
        await wait_for(pilot, lambda: not app.chat.answering)
        assert long_chat.chat(1).messages[-2].content == "Where is the Louvre?"


async def test_a_search_hit_far_back_is_mounted_and_selected(long_chat) -> None:
    app = RecordingApp(long_chat.opener())
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        await wait_for(pilot, lambda: len(mounted(app)) == WINDOW)
        [hit] = long_chat.search_chats("Question 3 about")
        app.chat.open_chat(hit.chat_id, select=hit.message_id)
        await wait_for(pilot, lambda: app.chat.log_view.selected is not None
                       and app.chat.log_view.selected.message_id == hit.message_id)
        assert app.chat.log_view.selected.text == "Question 3 about the Eiffel Tower"
        assert isinstance(mounted(app)[-1], AnswerMessage)
