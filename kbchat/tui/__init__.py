"""The terminal UI: `run(open_service)` starts it; `KbchatApp` is the Textual App behind it.

Modules, each importing only those listed before it: `commands` (slash commands, pure), `format`
(edits, checks, answers as text, pure), `edit_table` (the audit table's filter, sort and cells, pure),
`workers` (UI-thread hand-off, `TaskGate`), `events` (messages to the App), `dialogs`
(`ConfirmScreen`), `revert` (the revert flow), `detail` (one edit), `audit` (the table of edits),
`messages` (the chat's widgets), `chat` (`ChatPane`), `app` (the App, its palette).
"""

from kbchat.tui.app import KbchatApp, run

__all__ = ["KbchatApp", "run"]
