"""The terminal UI: `run(open_service)` starts it; `KbchatApp` is the Textual App behind it.

Modules, each importing only those listed before it: `commands` (slash commands, pure), `format`
(edits, checks, answers as text, pure), `chat_format` (provenance, chat list and search rows, the empty
state, pure), `correction` (the "correct this answer" guess, pure), `edit_table` (the audit table's
filter, sort and cells, pure), `workers` (UI-thread hand-off, `TaskGate`), `events` (messages to the
App), `dialogs` (`ConfirmScreen`, `PromptScreen`), `revert` (the revert flow), `detail` (one edit),
`audit` (the table of edits), `messages` (the chat's widgets), `message_nav` (the focusable message
list: select, copy, correct, ask again), `answer_job` (one answer, from question to saved message),
`chat_actions` (rename, delete, export a chat), `chat_list` and `search` (their screens), `chat_flows`
(the saved-chat commands), `edit_flow` (the edit commands), `chat` (`ChatPane`), `app` (the App, its
palette).
"""

from kbchat.tui.app import KbchatApp, run

__all__ = ["KbchatApp", "run"]
