"""The terminal UI: `run(open_service)` starts it; `KbchatApp` is the Textual App behind it."""

from kbchat.tui.app import KbchatApp, run

__all__ = ["KbchatApp", "run"]
