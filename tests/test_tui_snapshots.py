"""Screenshots of the TUI on the FakeChatService (fixed times, no delays), compared with pytest-textual-snapshot.

Regenerate after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from kbchat.tui import KbchatApp
from kbchat.tui.audit import AuditScreen
from kbchat.tui.chat_list import ChatListScreen
from kbchat.tui.detail import EditDetailScreen
from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.search import SearchScreen
from tests.fake_service import FakeChatService


async def _until(pilot: Pilot, predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.01)


async def _ready(pilot: Pilot) -> KbchatApp:
    """Wait for the service to open; stop the cursor blinking so the picture is stable."""
    app = pilot.app
    assert isinstance(app, KbchatApp)
    await _until(pilot, lambda: app.service is not None and "active edit" in app.sub_title)
    for field in app.query(Input):
        field.cursor_blink = False
    return app


async def _submit(pilot: Pilot, app: KbchatApp, text: str) -> None:
    app.chat.prompt.value = text
    await pilot.press("enter")


def _populated() -> FakeChatService:
    fake = FakeChatService()
    fake.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="serac")
    fake.edit("Louvre → The Louvre is in London", method="rome")
    fake.failing_metrics = {"generalization"}
    fake.edit("Colosseum → The Colosseum stands in Athens", method="memit")
    fake.failing_metrics = set()
    fake.revert(2)
    return fake


def test_chat_after_one_answer(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = await _ready(pilot)
        await _submit(pilot, app, "Where is the Eiffel Tower?")
        await _until(pilot, lambda: app.busy is None and not app.chat.answering)

    app = KbchatApp(FakeChatService().opener())
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_edit_confirmation(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = await _ready(pilot)
        await _submit(pilot, app, "/edit Eiffel Tower → The Eiffel Tower is located in Rome --method rome")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmScreen))

    app = KbchatApp(FakeChatService().opener())
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


async def _open_audit(pilot: Pilot) -> None:
    app = await _ready(pilot)
    await pilot.press("ctrl+a")
    await _until(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.records)
    for field in app.screen.query(Input):
        field.cursor_blink = False


def test_audit_screen_80x24(snap_compare) -> None:
    app = KbchatApp(_populated().opener())
    assert snap_compare(app, terminal_size=(80, 24), run_before=_open_audit)


def test_audit_screen_large(snap_compare) -> None:
    app = KbchatApp(_populated().opener())
    assert snap_compare(app, terminal_size=(160, 40), run_before=_open_audit)


def test_edit_detail(snap_compare) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = await _ready(pilot)
        await _submit(pilot, app, "/audit 3")
        await _until(pilot, lambda: isinstance(app.screen, EditDetailScreen))

    app = KbchatApp(_populated().opener())
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


# -- saved chats ------------------------------------------------------------------------------------

FIXED_NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 40)], ids=["80x24", "160x40"])


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chats saved at a fixed time, so the chat list's dates do not change from run to run."""
    monkeypatch.setattr("kbchat.ledger.chats.now", lambda: FIXED_NOW)


def _with_chats() -> FakeChatService:
    """Three saved chats; the last (shown on start) has an answer given again after an edit that has
    since been reverted ("then:" / "now:", stale), and one made with an active weight edit."""
    fake = FakeChatService()
    fake.say(fake.new_chat().id, "What is the capital of France?").result()
    fake.say(fake.new_chat().id, "Tell me about the Colosseum").result()
    chat = fake.new_chat().id
    first = fake.say(chat, "Where is the Eiffel Tower?").result()
    assert first.question_id is not None
    fake.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="serac")  # 1
    fake.ask_again(chat, first.question_id).result()
    fake.edit("Louvre → The Louvre is in London", method="rome")  # 2
    fake.say(chat, "Where is the Louvre?").result()
    fake.revert(1)
    return fake


@SIZES
def test_answers_with_provenance(snap_compare, fixed_clock, size: tuple[int, int]) -> None:
    app = KbchatApp(_with_chats().opener())
    assert snap_compare(app, terminal_size=size, run_before=_ready)


@SIZES
def test_chat_list(snap_compare, fixed_clock, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = await _ready(pilot)
        await pilot.press("ctrl+o")
        await _until(pilot, lambda: isinstance(app.screen, ChatListScreen) and app.screen.chats)

    app = KbchatApp(_with_chats().opener())
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@SIZES
def test_search_results(snap_compare, fixed_clock, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = await _ready(pilot)
        await _submit(pilot, app, "/search paris")
        await _until(pilot, lambda: isinstance(app.screen, SearchScreen) and app.screen.hits)
        for field in app.screen.query(Input):
            field.cursor_blink = False

    app = KbchatApp(_with_chats().opener())
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@SIZES
def test_correction_prefill(snap_compare, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot) -> None:
        app = await _ready(pilot)
        await _submit(pilot, app, "Where is the Eiffel Tower?")
        await _until(pilot, lambda: app.busy is None and not app.chat.answering)
        await pilot.press("up", "e")
        await _until(pilot, lambda: app.chat.prompt.value.startswith("/edit"))

    app = KbchatApp(FakeChatService().opener())
    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_empty_chat(snap_compare) -> None:
    app = KbchatApp(FakeChatService().opener())
    assert snap_compare(app, terminal_size=(80, 24), run_before=_ready)
