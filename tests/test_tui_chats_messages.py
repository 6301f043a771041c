"""Saved conversations in the TUI, message by message, against the scripted FakeChatService: moving
through the messages (copy, correct, ask again), provenance and stale answers, turns left out of the
context, the empty state and help, questions queued while opening, and service failures as
notifications."""

from __future__ import annotations

import pytest
from textual.widgets import Markdown

from kbchat.errors import ChatNotFound, KbchatError
from kbchat.tui.audit import AuditScreen
from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.messages import AnswerMessage, EmptyState, UserMessage
from tests.fake_service import FakeChatService
from tests.test_tui import ANSWER, RecordingApp, answers, idle, messages, opened, submit, wait_for
from tests.test_tui_chats import EIFFEL_Q, FRANCE_A, FRANCE_Q, ask, questions

pytestmark = pytest.mark.anyio


# -- moving through messages -------------------------------------------------------------------------------


async def test_copy_the_selected_message(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await pilot.press("up")  # from the input into the messages: the last one is selected
        log = app.chat.log_view
        assert log.has_focus and isinstance(log.selected, AnswerMessage)
        await pilot.press("c")
        assert app.clipboard == ANSWER
        assert messages(app)[-1].startswith("Copied the answer")
        await pilot.press("k", "c")
        assert isinstance(log.selected, UserMessage) and app.clipboard == EIFFEL_Q
        assert messages(app)[-1].startswith("Copied the question")
        await pilot.press("escape")
        assert app.chat.prompt.has_focus


async def test_e_prefills_a_correction_and_edits_only_after_enter(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await pilot.press("up", "e")
        prompt = app.chat.prompt
        assert prompt.value == "/edit Eiffel Tower → The Eiffel Tower is located in Paris, France"
        assert prompt.has_focus and prompt.cursor_position == len(prompt.value)
        await pilot.pause(0.2)
        assert fake.edits() == [] and not [c for c in fake.calls if c[0] in ("parse", "edit")]
        prompt.value = "/edit Eiffel Tower → The Eiffel Tower is located in Rome"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert fake.edits() == []  # still nothing: the edit is confirmed first
        await pilot.press("y")
        await wait_for(pilot, lambda: len(fake.edits()) == 1)
        assert fake.edits()[0].target == "Rome"


async def test_e_on_a_question_corrects_its_latest_answer(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await pilot.press("up", "k")  # the question
        assert isinstance(app.chat.log_view.selected, UserMessage)
        await pilot.press("e")
        assert app.chat.prompt.value == "/edit Eiffel Tower → The Eiffel Tower is located in Paris, France"


async def test_moving_through_messages_tells_the_footer_only_when_the_keys_change(fake: FakeChatService) -> None:
    """Each bindings refresh makes the footer re-lay out the screen: moving between a question and its
    answer (the same keys apply to both) must not cause one."""
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await ask(pilot, FRANCE_Q)
        await pilot.press("up")
        published: list[object] = []
        app.screen.bindings_updated_signal.subscribe(app, published.append)
        await pilot.press("k", "k", "k", "j", "j")
        assert published == []


async def test_r_asks_again_and_shows_both_answers(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        fake.edit("Eiffel Tower → The Eiffel Tower is located in Rome")
        await pilot.press("up", "k")  # the question
        assert isinstance(app.chat.log_view.selected, UserMessage)
        await pilot.press("r")
        await idle(pilot)
        assert ("ask_again", 1, 1) in fake.calls
        then, now = answers(app)
        assert (str(then.label.content), then.text) == ("then:", ANSWER)
        assert (str(now.label.content), now.text) == ("now:", "The Eiffel Tower is located in Rome.")
        assert "memory: edit #1 (Eiffel Tower → Rome)" in str(now.meta.content)
        assert [m.content for m in fake.chat(1).answers_to(1)] == [then.text, now.text]
        # Reopened, the chat shows them the same way.
        await submit(pilot, "/new")
        await pilot.pause()
        app.chat.open_chat(1)
        await wait_for(pilot, lambda: len(answers(app)) == 2)
        assert [str(a.label.content) for a in answers(app)] == ["then:", "now:"]


# -- provenance -------------------------------------------------------------------------------------------


async def test_provenance_and_a_revert_in_the_audit_marks_the_answer_stale(fake: FakeChatService) -> None:
    fake.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="serac")
    app = RecordingApp(fake.opener())
    async with app.run_test(size=(120, 36)) as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        [answer] = answers(app)
        assert str(answer.meta.content) == "memory: edit #1 (Eiffel Tower → Rome)"
        assert not answer.has_class("stale")
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.records)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: fake.get_edit(1).status == "reverted")
        await pilot.press("escape")
        await wait_for(pilot, lambda: answer.has_class("stale"))
        assert str(answer.meta.content) == "⚠ answered with memory edit #1 (Eiffel Tower → Rome), since reverted"


async def test_dropped_turns_are_said() -> None:
    fake = FakeChatService(context_chars=80)  # one question and its answer fill it
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await ask(pilot, EIFFEL_Q)
        await ask(pilot, FRANCE_Q)
        first, second = answers(app)
        assert "left out" not in str(first.meta.content)
        assert str(second.meta.content).endswith(
            "1 earlier turn was left out: it does not fit in the model's context")


# -- empty state, help, queue, failures -----------------------------------------------------------------------


async def test_empty_state_and_help(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        empty = app.query_one(EmptyState)
        text = str(empty.content)
        for expected in ("Ask a question", "/edit SUBJECT → FACT", "Open the audit", "Ctrl+A", "F1 or /help"):
            assert expected in text
        await submit(pilot, "/help")
        await pilot.pause()
        assert len(app.query(".help")) == 1
        await pilot.press("f1")
        await pilot.pause()
        helps = list(app.query(".help").results(Markdown))
        assert len(helps) == 2 and "`/search [TEXT]`" in helps[1].source and "`F1`" in helps[1].source
        await ask(pilot, EIFFEL_Q)
        assert not app.query(EmptyState)


async def test_a_question_typed_while_opening_is_queued_then_asked() -> None:
    fake = FakeChatService()
    app = RecordingApp(fake.opener(steps=3, delay=0.2))
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.chat.prompt.has_focus)
        assert app.service is None
        await submit(pilot, EIFFEL_Q)
        await submit(pilot, FRANCE_Q)
        await pilot.pause()
        waiting = list(app.query(UserMessage))
        assert [w.text for w in waiting] == [EIFFEL_Q, FRANCE_Q]
        assert all(w.has_class("queued") and "queued" in w.note for w in waiting)
        assert app.chat.prompt.value == ""
        await submit(pilot, "/edits")  # commands cannot wait: said, and the text stays
        await wait_for(pilot, lambda: messages(app, "warning"))
        assert messages(app, "warning") == ["the model is still opening: only questions can wait for it"]
        app.chat.prompt.value = ""
        await opened(pilot)
        # Asked in order, each answer under its question.
        await wait_for(pilot, lambda: len(answers(app)) == 2 and answers(app)[1].text == FRANCE_A)
        await idle(pilot)
        log = [type(w).__name__ for w in app.chat.log_view.children]
        assert log == ["UserMessage", "AnswerMessage", "UserMessage", "AnswerMessage"]
        assert questions(app) == [EIFFEL_Q, FRANCE_Q] and not app.query(".queued")
        assert [c for c in fake.calls if c[0] == "say"] == [("say", 1, EIFFEL_Q), ("say", 1, FRANCE_Q)]


async def test_service_failures_are_notifications(fake: FakeChatService) -> None:
    fake.fail["chats"] = KbchatError("the chat store is locked: close the other kbchat")
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await wait_for(pilot, lambda: messages(app, "error"))
        assert messages(app, "error") == ["the chat store is locked: close the other kbchat"]
        assert app.query(EmptyState)  # a new chat, and the app carries on
        await ask(pilot, EIFFEL_Q)
        assert answers(app)[0].text == ANSWER
        fake.fail["ask_again"] = ChatNotFound("no question #1 in chat #1")
        await pilot.press("up", "k", "r")
        await wait_for(pilot, lambda: len(messages(app, "error")) == 2)
        await idle(pilot)
        assert messages(app, "error")[1] == "no question #1 in chat #1"
        assert "(failed)" in str(answers(app)[1].meta.content)
        app.chat.open_chat(42)
        await wait_for(pilot, lambda: len(messages(app, "error")) == 3)
        assert messages(app, "error")[2].startswith("no chat #42")
        assert app.chat.chat_id == 1 and app.is_running
        fake.fail["say"] = KbchatError("disk full")
        await ask(pilot, FRANCE_Q)
        assert messages(app, "error")[3] == "disk full"
        assert app.is_running
