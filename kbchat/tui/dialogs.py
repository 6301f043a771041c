"""Modal dialogs."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses with True on confirm."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, body: Content | str, *, confirm: str = "Confirm",
                 variant: str = "primary") -> None:
        super().__init__(classes="confirm")
        self._title = title
        self._body = body
        self._confirm = confirm
        self._variant = variant

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = self._title
            yield Static(self._body, id="dialog-body")
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self._confirm} (y)", id="yes", variant=self._variant)  # type: ignore[arg-type]
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#yes", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class PromptScreen(ModalScreen[str | None]):
    """Asks for one line of text; dismisses with it (stripped), or None when cancelled or left empty."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, label: str, value: str = "", *, confirm: str = "OK") -> None:
        super().__init__(classes="prompt")
        self._title = title
        self._label = label
        self._value = value
        self._confirm = confirm

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = self._title
            yield Static(self._label, id="dialog-body")
            yield Input(self._value, id="prompt-input", select_on_focus=False)
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self._confirm} (Enter)", id="ok", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#prompt-input", Input).focus()

    @on(Input.Submitted, "#prompt-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        value = self.query_one("#prompt-input", Input).value.strip()
        self.dismiss(value or None if event.button.id == "ok" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
