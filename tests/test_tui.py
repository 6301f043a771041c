"""The TUI against a scripted FakeChatService: commands, streaming, edits, the audit screen.

Plus unit tests of the pure helpers (slash-command parsing and completion, audit filtering and
sorting), and one slow story against the real engine (`real_service` comes from conftest).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from textual.notifications import SeverityLevel
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label, Markdown

from kbchat.config import ALL_METHODS, MEMORY_METHODS
from kbchat.errors import EditFailed, ModelLoadError
from kbchat.records import CheckRecord
from kbchat.service import Capabilities
from kbchat.tui import KbchatApp
from kbchat.tui.app import info_line
from kbchat.tui.audit import AuditScreen
from kbchat.tui.commands import Command, CommandError, complete, help_markdown, parse_command
from kbchat.tui.detail import EditDetailScreen
from kbchat.tui.dialogs import ConfirmScreen
from kbchat.tui.edit_table import filter_edits, sort_edits
from kbchat.tui.format import checks_text, metric_results, progress_line
from kbchat.tui.messages import AnswerMessage, EditCard, EditProgress, Note
from tests.fake_service import FakeChatService

# Async tests run on asyncio through anyio's pytest plugin (anyio comes with httpx and textual).
pytestmark = pytest.mark.anyio

EIFFEL = "/edit Eiffel Tower → The Eiffel Tower is located in Rome"
ANSWER = "The Eiffel Tower is located in **Paris**, France."

# -- helpers ----------------------------------------------------------------------------------------


async def wait_for(pilot: Pilot, predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Let the app run until `predicate()` is true; fail after `timeout` seconds (generous: a loaded
    CI machine can take seconds for a round trip that normally takes milliseconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(predicate, '__name__', predicate)}")
        await pilot.pause(0.01)


async def opened(pilot: Pilot) -> KbchatApp:
    app = pilot.app
    assert isinstance(app, KbchatApp)
    await wait_for(pilot, lambda: app.service is not None and "active edit" in app.sub_title)
    return app


async def submit(pilot: Pilot, text: str) -> None:
    """Type `text` into the chat input (set at once: → is not a key) and press Enter."""
    app = pilot.app
    assert isinstance(app, KbchatApp)
    app.chat.prompt.value = text
    app.chat.prompt.focus()
    await pilot.press("enter")


async def idle(pilot: Pilot) -> None:
    """Wait until no long operation runs and no answer streams."""
    app = pilot.app
    assert isinstance(app, KbchatApp)
    await wait_for(pilot, lambda: app.busy is None and not app.chat.answering)
    await pilot.pause()


class RecordingApp(KbchatApp):
    """The App, keeping every notification it shows as (message, severity)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notified: list[tuple[str, str]] = []

    def notify(self, message: str, *, severity: SeverityLevel = "information", **kwargs: Any) -> None:
        self.notified.append((str(message), severity))
        super().notify(message, severity=severity, **kwargs)


def messages(app: KbchatApp, severity: str | None = None) -> list[str]:
    assert isinstance(app, RecordingApp)
    return [message for message, level in app.notified if severity is None or level == severity]


def answers(app: KbchatApp) -> list[AnswerMessage]:
    return list(app.query(AnswerMessage))


def table_column(screen: AuditScreen, column: str) -> list[str]:
    table = screen.query_one(DataTable)
    return [str(table.get_cell(row_key, column)) for row_key in table.rows]


def populate(fake: FakeChatService) -> None:
    """Three edits, the last with a failing generalization check."""
    fake.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="serac")
    fake.edit("Louvre → The Louvre is in London", method="rome")
    fake.failing_metrics = {"generalization"}
    fake.edit("Colosseum → The Colosseum stands in Athens", method="memit")
    fake.failing_metrics = set()


# -- pure helpers -------------------------------------------------------------------------------------


def test_parse_plain_text_is_a_question() -> None:
    assert parse_command("  Where is the Eiffel Tower? ") == Command("ask", text="Where is the Eiffel Tower?")
    assert parse_command("   ") is None


def test_parse_edit_with_and_without_method() -> None:
    text = "Eiffel Tower → The Eiffel Tower is located in Rome"
    assert parse_command(f"/edit {text}") == Command("edit", text=text)
    assert parse_command(f"/edit {text}", default_method="ike") == Command("edit", text=text, method="ike")
    assert parse_command(f"/edit {text} --method ROME", default_method="ike") == Command(
        "edit", text=text, method="rome")
    assert parse_command(f"/edit --method=memit {text}") == Command("edit", text=text, method="memit")


@pytest.mark.parametrize("line, fragment", [
    ("/edit", "nothing to edit"),
    ("/edit Eiffel Tower → Rome --method", "--method needs a value"),
    ("/edit Eiffel Tower → Rome --method nope", "unknown method 'nope'"),
    ("/revert", "missing edit id"),
    ("/revert abc", "not an edit id"),
    ("/method foo", "unknown method"),
    ("/commit now", "takes no arguments"),
    ("/edits sideways", "unknown status"),
    ("/edti x", "did you mean /edit?"),
    ("/frobnicate", "unknown command /frobnicate"),
])
def test_parse_errors_say_how_to_fix(line: str, fragment: str) -> None:
    with pytest.raises(CommandError, match=None) as caught:
        parse_command(line)
    assert fragment in str(caught.value)


def test_parse_other_commands() -> None:
    assert parse_command("/revert #3") == Command("revert", edit_id=3)
    assert parse_command("/audit") == Command("audit")
    assert parse_command("/audit 7") == Command("audit", edit_id=7)
    assert parse_command("/method Rome") == Command("method", method="rome")
    assert parse_command("/method") == Command("method")
    assert parse_command("/edits active") == Command("edits", text="active")
    assert parse_command("/COMMIT") == Command("commit")
    assert parse_command("/clear") == Command("clear")
    assert parse_command("/help") == Command("help")


@pytest.mark.parametrize("value, expected", [
    ("/e", "/edit"),
    ("/edits", None),
    ("/re", "/revert"),
    ("/me", "/method"),
    ("/method r", "/method rome"),
    ("/method al", "/method alphaedit"),
    ("/method ", None),
    ("/edit X → Y --method m", "/edit X → Y --method memit"),
    ("/edit X → Y --m", "/edit X → Y --method"),
    ("/edits re", "/edits reverted"),
    ("hello", None),
    ("/zzz", None),
])
def test_completion(value: str, expected: str | None) -> None:
    assert complete(value) == expected


def test_metric_summary_and_filters(fake: FakeChatService) -> None:
    populate(fake)
    records = fake.edits()
    assert metric_results(records[2].checks) == [("reliability", True), ("generalization", False),
                                                ("locality", True)]
    assert checks_text(records[2].checks).plain == "rel ✓ gen ✗ loc ✓"
    assert checks_text(records[2].checks, compact=True).plain == "r✓ g✗ l✓"
    assert checks_text(()).plain == "pending"
    pending = CheckRecord("reliability", "generation", "p", "x", None, None, None)
    assert metric_results([records[0].checks[0], pending]) == [("reliability", None)]
    assert [r.id for r in filter_edits(records, "louvre")] == [2]
    assert [r.id for r in filter_edits(records, "#3")] == [3]
    assert [r.id for r in filter_edits(records, "", "reverted")] == []
    assert [r.id for r in sort_edits(records, "subject")] == [3, 1, 2]
    assert [r.id for r in sort_edits(records, "id", reverse=True)] == [3, 2, 1]
    assert [r.id for r in sort_edits(records, "checks")] == [3, 1, 2]


def test_info_line_puts_the_count_first(fake: FakeChatService) -> None:
    populate(fake)
    assert info_line(fake.info()).startswith("3 active edits · fake-lm-135M · cpu · ")


def test_progress_line() -> None:
    from kbchat.records import Progress

    assert progress_line(Progress("optimise", 3, 10, "rome", loss=0.41234)) == "optimise 3/10 · loss 0.412 · rome"
    assert progress_line(Progress("load")) == "load"


# -- the chat -----------------------------------------------------------------------------------------


async def test_open_shows_progress_then_is_ready() -> None:
    fake = FakeChatService()
    app = RecordingApp(fake.opener(steps=3, delay=0.05))
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: "loading model" in str(app.query_one("#opening-status", Label).content))
        # The input takes questions at once (they wait for the model: see the queued-question test).
        assert not app.chat.prompt.disabled and "asked as soon as the model is open" in app.chat.prompt.placeholder
        await opened(pilot)
        await pilot.pause()
        assert app.chat.prompt.placeholder == "Ask a question, or /help for commands"
        assert not app.query("#opening")
        assert app.sub_title == "0 active edits · fake-lm-135M · cpu · /tmp/kbchat-fake/ledger.db"
    assert fake.closed


async def test_open_failure_is_shown_not_raised() -> None:
    fake = FakeChatService(fail={"open": ModelLoadError("no weights: run make setup")})
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        status = app.query_one("#opening-status", Label)
        await wait_for(pilot, lambda: status.has_class("error"))
        assert "no weights: run make setup" in str(status.content)
        await wait_for(pilot, lambda: messages(app, "error") == ["no weights: run make setup"])
        assert app.chat.prompt.disabled
        await pilot.press("ctrl+a")  # nothing to audit, and nothing breaks
        assert not isinstance(app.screen, AuditScreen)
    assert not fake.closed  # it never opened


async def test_question_streams_into_markdown(fake: FakeChatService) -> None:
    fake.piece_delay = 0.1  # slow enough for the pilot to see the app idle between pieces
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "Where is the Eiffel Tower?")
        assert app.chat.prompt.value == ""
        [answer] = answers(app)
        # Pieces arrive one by one: part of the answer is visible before the whole.
        await wait_for(pilot, lambda: 0 < len(answer.text) < len(ANSWER))
        await idle(pilot)
        assert answer.text == ANSWER
        assert not answer.has_class("streaming")
        assert str(answer.meta.content) == "no edits"  # its provenance: no edit used, not cancelled
        # The next question carries the conversation so far (the service gives it to the model).
        fake.piece_delay = 0.0
        await submit(pilot, "And the capital of France?")
        await idle(pilot)
        assert answers(app)[1].text == "The capital of France is Paris."
        streams = [c for c in fake.calls if c[0] == "stream"]
        assert streams[0][2] == ()
        assert streams[1][2] == ({"role": "user", "content": "Where is the Eiffel Tower?"},
                                 {"role": "assistant", "content": ANSWER})


async def test_escape_cancels_a_slow_answer(fake: FakeChatService) -> None:
    fake.piece_delay = 4.0  # between words: a cancel that waited for the next one would take this long
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "Where is the Eiffel Tower?")
        [answer] = answers(app)
        await wait_for(pilot, lambda: answer.text)
        started = time.monotonic()
        await pilot.press("escape")
        await idle(pilot)
        # Not a latency target (a loaded machine took 1.7 s): the cancel does not wait for the next word.
        assert time.monotonic() - started < fake.piece_delay
        assert "(cancelled)" in str(answer.meta.content)
        assert answer.has_class("cancelled")
        assert 0 < len(answer.text) < len(ANSWER)
        # The service keeps what was said before Esc (its rule); the pane shows it as saved, marked.
        assert [m.content for m in fake.chat(1).messages] == ["Where is the Eiffel Tower?", answer.text]
        assert answer.message_id == fake.chat(1).messages[1].id
        fake.piece_delay = 0.0
        await submit(pilot, "capital of france?")  # still responsive
        await idle(pilot)
        assert answers(app)[1].text == "The capital of France is Paris."


async def test_failing_stream_is_notified(fake: FakeChatService) -> None:
    fake.fail["stream"] = RuntimeError("GPU on fire")
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "Where is the Eiffel Tower?")
        await idle(pilot)
        assert messages(app, "error") == ["RuntimeError: GPU on fire"]
        assert "(failed)" in str(answers(app)[0].meta.content)
        assert app.is_running


async def test_edit_confirm_then_card_with_checks(fake: FakeChatService) -> None:
    fake.edit_delay = 0.2  # slow enough for the pilot to see the progress between steps
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, EIFFEL)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        body = str(app.screen.query_one("#dialog-body").content)
        for expected in ("Eiffel Tower", "The Eiffel Tower is located in", "Rome", "engine default"):
            assert expected in body
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditProgress))
        await wait_for(pilot, lambda: "optimise" in str(app.query_one(EditProgress).label.content))
        await wait_for(pilot, lambda: app.query(EditCard))
        [card] = app.query(EditCard)
        assert card.border_title == "edit #1"
        text = str(card.content)
        assert "Eiffel Tower → Rome" in text and "serac (memory) · active" in text
        assert "✓ reliability (teacher_forced)" in text and "✓ locality (generation)" in text
        await wait_for(pilot, lambda: not app.query(EditProgress))
        await wait_for(pilot, lambda: app.sub_title.startswith("1 active edit ·"))
        # The answer now uses the edit, and says so.
        await submit(pilot, "Where is the Eiffel Tower?")
        await idle(pilot)
        answer = answers(app)[0]
        assert answer.text == "The Eiffel Tower is located in Rome."
        assert "memory: edit #1" in str(answer.meta.content)
        await pilot.click(answer.meta, offset=(10, 0))  # on "edit #1": opens that edit
        await wait_for(pilot, lambda: isinstance(app.screen, EditDetailScreen))
        assert app.screen.record.id == 1


async def test_cancelled_confirmation_changes_nothing(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, EIFFEL)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause()
        assert fake.edits() == [] and not app.query(EditCard)
        assert app.busy is None


async def test_invalid_edit_notifies_and_changes_nothing(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/edit The Eiffel Tower is in Rome")
        await wait_for(pilot, lambda: messages(app, "error"))
        assert "write it as SUBJECT → FACT" in messages(app, "error")[0]
        await wait_for(pilot, lambda: app.chat.prompt.value == "/edit The Eiffel Tower is in Rome")
        app.chat.prompt.value = ""
        await submit(pilot, "/edit")
        await wait_for(pilot, lambda: len(messages(app, "error")) == 2)
        assert "nothing to edit" in messages(app, "error")[1]
        assert app.chat.prompt.value == "/edit"  # kept, to be fixed
        await idle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert fake.edits() == [] and not app.query(EditCard)
        assert not [c for c in fake.calls if c[0] == "edit"]


async def test_failed_edit_is_an_error_notification(fake: FakeChatService) -> None:
    fake.fail["edit"] = EditFailed("the edit did not take: rolled back, nothing changed")
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, EIFFEL)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: messages(app, "error"))
        await idle(pilot)
        assert messages(app, "error") == ["the edit did not take: rolled back, nothing changed"]
        assert not app.query(EditCard) and not app.query(EditProgress)
        await submit(pilot, "capital of France?")  # the app carries on
        await idle(pilot)
        assert answers(app)[0].text == "The capital of France is Paris."


async def test_method_rome_then_edit_uses_rome(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/method rome")
        await pilot.pause()
        assert app.chat.default_method == "rome"
        assert "rome (weight edit)" in str(list(app.query(Note))[-1].content)
        await submit(pilot, EIFFEL)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "rome (weight edit)" in str(app.screen.query_one("#dialog-body").content)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditCard))
        assert ("edit", EIFFEL.removeprefix("/edit "), "rome") in fake.calls
        assert app.query_one(EditCard).record.method == "rome"


async def test_revert_unknown_id_notifies(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/revert 999")
        await wait_for(pilot, lambda: messages(app, "error"))
        assert messages(app, "error") == ["no edit #999: /edits lists them"]
        assert not isinstance(app.screen, ConfirmScreen)


async def test_revert_from_chat_with_confirmation(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, EIFFEL)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.sub_title.startswith("1 active edit"))
        await submit(pilot, "/revert 1")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.sub_title.startswith("0 active edits"))
        assert fake.get_edit(1).status == "reverted"
        await wait_for(pilot, lambda: "Reverted edit #1" in str(list(app.query(Note))[-1].content))
        assert app.query_one(EditCard).has_class("status-reverted")


async def test_edits_list_help_clear_commit(fake: FakeChatService) -> None:
    populate(fake)
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/edits")
        await wait_for(pilot, lambda: app.query(".edits"))
        listing = str(app.query_one(".edits", Note).content)
        assert "3 edits" in listing and "#2 active rome  Louvre → London" in listing
        await submit(pilot, "/help")
        await pilot.pause()
        help_text = app.query_one(".help", Markdown).source
        for name in ("/edit", "/edits", "/audit", "/revert", "/commit", "/method", "/clear", "/help"):
            assert f"`{name}" in help_text
        await submit(pilot, "/commit")
        await wait_for(pilot, lambda: "Committed" in str(list(app.query(Note))[-1].content))
        # The one memory edit (serac, #1) went into a new weight edit, #4; the report lists what it retired.
        report = str(list(app.query(Note))[-1].content)
        assert report.startswith("Committed 1 edit into the weights as edit #4:\n#1 committed serac")
        assert fake.get_edit(1).status == "committed" and fake.get_edit(4).kind == "weight"
        await wait_for(pilot, lambda: app.sub_title.startswith("3 active edits"))  # #2, #3 and #4
        # A committed edit cannot be reverted: refused before asking, the service is not called.
        await submit(pilot, "/revert 1")
        await wait_for(pilot, lambda: messages(app, "warning"))
        assert messages(app, "warning") == ["edit #1 is committed: only active edits can be reverted"]
        assert not isinstance(app.screen, ConfirmScreen) and ("revert", 1) not in fake.calls
        # Nothing left to commit: the service says so, as an error.
        await submit(pilot, "/commit")
        await wait_for(pilot, lambda: messages(app, "error"))
        await idle(pilot)
        assert messages(app, "error") == ["no active memory edits to commit"]
        assert not app.query(EditProgress)
        await submit(pilot, "/clear")
        await pilot.pause()
        assert not app.query(Note) and not app.query(".help")


async def test_unknown_command_keeps_the_text(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/edti Eiffel")
        await wait_for(pilot, lambda: messages(app, "error"))
        assert "did you mean /edit?" in messages(app, "error")[0]
        assert app.chat.prompt.value == "/edti Eiffel"


async def test_slash_completion_in_the_input(fake: FakeChatService) -> None:
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        app.chat.prompt.focus()
        await pilot.press("/", "m", "e")
        await pilot.pause(0.1)
        await pilot.press("right")  # accepts the suggestion
        assert app.chat.prompt.value == "/method"


async def test_audit_id_opens_the_detail(fake: FakeChatService) -> None:
    populate(fake)
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await submit(pilot, "/audit 3")
        await wait_for(pilot, lambda: isinstance(app.screen, EditDetailScreen))
        assert ("get_edit", 3) in fake.calls
        screen = app.screen
        assert screen.record.id == 3
        detail = " ".join(str(s.content) for s in screen.query(".check"))
        assert "FAIL  generalization  · generation" in detail
        assert "expected  Athens" in detail and "before    unknown" not in detail
        await pilot.press("escape")
        assert not isinstance(app.screen, EditDetailScreen)
        await submit(pilot, "/audit 42")
        await wait_for(pilot, lambda: messages(app, "error"))
        assert messages(app, "error") == ["no edit #42: /edits lists them"]


# -- the audit screen ---------------------------------------------------------------------------------


async def test_audit_filter_sort_detail_revert(fake: FakeChatService) -> None:
    populate(fake)
    app = RecordingApp(fake.opener())
    async with app.run_test(size=(120, 36)) as pilot:
        await opened(pilot)
        assert app.sub_title.startswith("3 active edits")
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.records)
        screen = app.screen
        assert isinstance(screen, AuditScreen)
        table = screen.query_one(DataTable)
        assert table.row_count == 3
        assert table_column(screen, "checks") == ["rel ✓ gen ✓ loc ✓"] * 2 + ["rel ✓ gen ✗ loc ✓"]

        # Filter by text.
        await pilot.press("slash")
        assert screen.query_one("#audit-filter", Input).has_focus
        await pilot.press(*"louvre")
        assert table_column(screen, "subject") == ["Louvre"]
        await pilot.press("enter")  # back to the table
        assert table.has_focus
        screen.query_one("#audit-filter", Input).value = ""
        await pilot.pause()
        assert table.row_count == 3

        # Sort: a key cycles the column, a header click sorts by that column, a second click reverses.
        await pilot.press("s")
        assert screen.sort_column == "time"
        x = sum(c.get_render_width(table) for c in list(table.columns.values())[:2]) + 2
        await pilot.click(DataTable, offset=(x, 0))
        await pilot.pause()
        assert screen.sort_column == "subject"
        assert table_column(screen, "subject") == ["Colosseum", "Eiffel Tower", "Louvre"]
        await pilot.click(DataTable, offset=(x, 0))
        await pilot.pause()
        assert table_column(screen, "subject") == ["Louvre", "Eiffel Tower", "Colosseum"]

        # Select a row (Louvre, now first) to see its detail.
        table.move_cursor(row=0)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, EditDetailScreen))
        detail = app.screen
        fields = str(detail.query_one("#detail-fields").content)
        assert "Louvre → The Louvre is in London" in fields and "rome (weight)" in fields
        checks = [str(s.content) for s in detail.query(".check")]
        assert len(checks) == 3
        assert "teacher_forced" in checks[0] and "expected  London" in checks[0]
        assert "before    Paris" in checks[0] and "after     London" in checks[0]
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)

        # Revert it, with confirmation: the table and the header count follow at once.
        table.move_cursor(row=0)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: table_column(screen, "status")[0] == "reverted")
        await wait_for(pilot, lambda: app.sub_title.startswith("2 active edits"))
        assert fake.get_edit(2).status == "reverted"

        # Filter by status: a key cycles any → active → reverted.
        await pilot.press("t")
        assert table_column(screen, "status") == ["active", "active"]
        await pilot.press("t")
        assert table_column(screen, "subject") == ["Louvre"]

        # Reverting again is refused politely.
        table.move_cursor(row=0)
        await pilot.press("r")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert messages(app, "warning")[-1] == "edit #2 is reverted: only active edits can be reverted"
        assert fake.calls.count(("revert", 2)) == 1

        await pilot.press("escape")
        assert app.screen is app.screen_stack[0]
        assert "Reverted edit #2" in str(list(app.query(Note))[-1].content)


async def test_audit_from_the_command_palette(fake: FakeChatService) -> None:
    populate(fake)
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"audit")
        await pilot.pause(0.2)  # the palette searches in the background
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen))
        await wait_for(pilot, lambda: app.screen.query_one(DataTable).row_count == 3)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"sort by")
        await pilot.pause(0.2)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.sort_column == "time")


async def test_reverting_a_memory_edit_in_the_audit_brings_back_the_one_it_replaced(fake: FakeChatService) -> None:
    fake.edit("Eiffel Tower → The Eiffel Tower is located in Rome", method="serac")
    fake.edit("Eiffel Tower → The Eiffel Tower is located in Berlin", method="serac")  # supersedes #1
    app = RecordingApp(fake.opener())
    async with app.run_test(size=(120, 36)) as pilot:
        await opened(pilot)
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.records)
        screen = app.screen
        assert isinstance(screen, AuditScreen)
        assert table_column(screen, "status") == ["superseded", "active"]
        screen.query_one(DataTable).move_cursor(row=1)
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: table_column(screen, "status") == ["active", "reverted"])
        await wait_for(pilot, lambda: app.sub_title.startswith("1 active edit ·"))


class MemoryOnlyFake(FakeChatService):
    """A service that can only make memory edits (like the OpenAI-backend host), with a problem to report."""

    def capabilities(self) -> Capabilities:
        return replace(super().capabilities(), methods=MEMORY_METHODS, default_method="serac",
                       weight_edits=False, export=False)

    def problems(self) -> list[str]:
        return ["edit #7: its delta is missing from the ledger"]


def test_commands_accept_only_the_given_methods() -> None:
    assert complete("/method r") == "/method rome"
    assert complete("/method r", MEMORY_METHODS) is None
    assert complete("/method i", MEMORY_METHODS) == "/method ike"
    assert parse_command("/method IKE", methods=MEMORY_METHODS) == Command("method", method="ike")
    with pytest.raises(CommandError, match="unknown method 'rome': choose one of serac, ike"):
        parse_command("/edit X → the X is Y --method rome", methods=MEMORY_METHODS)
    assert "Methods: serac, ike." in help_markdown(methods=MEMORY_METHODS)
    assert f"Methods: {', '.join(ALL_METHODS)}." in help_markdown()


async def test_the_chat_offers_the_services_methods_and_reports_its_problems() -> None:
    fake = MemoryOnlyFake()
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        await opened(pilot)
        await pilot.pause()
        assert app.capabilities == fake.capabilities()
        notes = [str(n.content) for n in app.query(Note)]
        assert "Problem found on opening: edit #7: its delta is missing from the ledger" in notes
        await submit(pilot, "/method rome")
        await wait_for(pilot, lambda: messages(app, "error"))
        assert messages(app, "error") == ["unknown method 'rome': choose one of serac, ike"]
        assert app.chat.prompt.value == "/method rome" and app.chat.default_method is None
        app.chat.prompt.value = "/help"
        await pilot.press("enter")
        await pilot.pause()
        assert "Methods: serac, ike." in app.query_one(".help", Markdown).source


class IncompatibleFake(FakeChatService):
    """A service that opens, then cannot say what it can do."""

    def capabilities(self) -> Capabilities:
        raise ModelLoadError("server too old")


async def test_capabilities_failing_is_an_open_failure() -> None:
    fake = IncompatibleFake()
    app = RecordingApp(fake.opener())
    async with app.run_test() as pilot:
        status = app.query_one("#opening-status", Label)
        await wait_for(pilot, lambda: status.has_class("error"))
        assert "server too old" in str(status.content)
        assert app.service is None and app.chat.prompt.disabled
    assert fake.closed  # opened, then closed again: it was unusable


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
async def test_works_at_small_and_large_sizes(fake: FakeChatService, size: tuple[int, int]) -> None:
    populate(fake)
    app = RecordingApp(fake.opener())
    async with app.run_test(size=size) as pilot:
        await opened(pilot)
        screen_region = app.screen.region
        await submit(pilot, "Where is the Eiffel Tower?")
        await idle(pilot)
        assert screen_region.contains_region(app.chat.prompt.region)
        assert screen_region.contains_region(answers(app)[0].region)
        await submit(pilot, "/edit Louvre → The Louvre is in Berlin")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        dialog = app.screen.query_one("#dialog")
        assert app.screen.region.contains_region(dialog.region)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditCard))
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.records)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 4
        # Every column fits: no horizontal scrolling needed to see the checks.
        assert table.virtual_size.width <= table.size.width
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, EditDetailScreen))
        assert app.screen.region.contains_region(app.screen.query_one("#detail").region)


# -- the real engine ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_story_with_the_real_engine(real_service) -> None:
    """Ask, /edit the Eiffel Tower to Rome with serac, see the card, revert it in the audit screen."""
    app = RecordingApp(lambda progress: real_service, close_service=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "active edit" in app.sub_title, timeout=120)
        await submit(pilot, "Where is the Eiffel Tower?")
        await wait_for(pilot, lambda: app.busy is None and not app.chat.answering, timeout=120)
        assert answers(app)[0].text.strip()
        await submit(pilot, EIFFEL + " --method serac")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), timeout=60)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.query(EditCard) or messages(app, "error"), timeout=600)
        assert not messages(app, "error")
        card = app.query_one(EditCard)
        edit_id = card.record.id
        assert card.record.method == "serac" and card.record.target == "Rome"
        assert card.border_title == f"edit #{edit_id}"
        await pilot.press("ctrl+a")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.records, timeout=60)
        screen = app.screen
        table = screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(str(edit_id)))
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: str(table.get_cell(str(edit_id), "status")) == "reverted", timeout=300)
        assert real_service.get_edit(edit_id).status == "reverted"
