"""Issue #13's story on the real default model, through the TUI: ask about the Eiffel Tower (Paris),
correct the answer with `e`, confirm, ask again with `r` (Rome, beside Paris), quit, reopen: the chat is
there with both answers and their provenance; revert the edit: the Rome answer is marked as made with
a reverted edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.messages import EditCard, UserMessage
from tests.test_tui import RecordingApp, answers, messages, submit, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

QUESTION = "Where is the Eiffel Tower?"
LOAD = 180  # seconds: opening the real model on a loaded machine


def open_engine(model_home: Path, ledger: Path):
    from kbchat.engine.local import LocalEngine

    return LocalEngine.open(db=f"sqlite:///{ledger}", home=model_home)


async def ready(pilot, app) -> None:
    await wait_for(pilot, lambda: "active edit" in app.sub_title, timeout=LOAD)
    await wait_for(pilot, lambda: app.busy is None and not app.chat.answering, timeout=LOAD)


async def settle(pilot, app, timeout: float = 300) -> None:
    await pilot.pause(0.2)
    await wait_for(pilot, lambda: app.busy is None and not app.chat.answering, timeout=timeout)


async def test_correct_ask_again_reopen_revert(model_home: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    app = RecordingApp(lambda progress: open_engine(model_home, ledger))
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await submit(pilot, QUESTION)
        await settle(pilot, app)
        [paris] = answers(app)
        assert "Paris" in paris.text, paris.text
        # e on the answer: an /edit prefilled from the question's subject and the answer's claim
        await pilot.press("up", "e")
        prompt = app.chat.prompt
        assert prompt.value.startswith("/edit Eiffel Tower → "), prompt.value
        assert "Paris" in prompt.value
        prompt.value = "/edit Eiffel Tower → The Eiffel Tower is located in Rome"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=120)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditCard) or messages(app, "error"), timeout=1200)
        assert not messages(app, "error"), messages(app, "error")
        edit_id = app.query_one(EditCard).record.id
        # r on the question: the answer now, beside the one given then
        await pilot.press("up")
        log = app.chat.log_view
        for _ in range(10):
            if isinstance(log.selected, UserMessage):
                break
            await pilot.press("k")
        assert isinstance(log.selected, UserMessage) and log.selected.text == QUESTION
        await pilot.press("r")
        await settle(pilot, app)
        then, now = answers(app)
        assert "Paris" in then.text and "Rome" in now.text, (then.text, now.text)
        assert f"edit #{edit_id}" in str(now.meta.content)
    # quit (the app closed the engine), reopen: the chat is there with both answers and provenance
    reopened = open_engine(model_home, ledger)
    try:
        [chat] = reopened.chats()
        saved = reopened.chat(chat.id)
        question = saved.messages[0]
        then_m, now_m = saved.answers_to(question.id)
        assert [u.id for u in now_m.edits] == [edit_id] and then_m.edits == ()
        assert now_m.weights == then_m.weights and now_m.model == then_m.model
        reopened.revert(edit_id)
    finally:
        reopened.close()
    app = RecordingApp(lambda progress: open_engine(model_home, ledger))
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await wait_for(pilot, lambda: len(answers(app)) == 2, timeout=60)
        then, now = answers(app)
        assert "Paris" in then.text and "Rome" in now.text
        assert now.has_class("stale") and not then.has_class("stale")
        assert f"memory edit #{edit_id} (Eiffel Tower → Rome), since reverted" in str(now.meta.content)
