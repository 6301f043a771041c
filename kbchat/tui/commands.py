"""Slash commands of the chat input: parsing and completion, as pure functions testable without a UI."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from textual.suggester import Suggester

from kbchat.config import ALL_METHODS, STATUSES
from kbchat.conversations.export import EXPORT_FORMATS
from kbchat.errors import KbchatError


class CommandError(KbchatError):
    """A slash command that could not be understood; the message says the right usage."""


@dataclass(frozen=True)
class CommandSpec:
    name: str  # with the slash
    usage: str  # arguments, as shown in /help
    summary: str


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("/edit", "SUBJECT → FACT [--method M]", "correct a fact (asks for confirmation)"),
    CommandSpec("/edits", "[STATUS]", "list the edits in the ledger"),
    CommandSpec("/audit", "[ID]", "open the audit screen, or the detail of one edit"),
    CommandSpec("/revert", "ID", "revert an edit (asks for confirmation)"),
    CommandSpec("/commit", "", "commit the active edits"),
    CommandSpec("/method", "[NAME]", "set (or show) the default method for /edit"),
    CommandSpec("/new", "", "start a new chat (the others stay saved)"),
    CommandSpec("/chats", "", "the saved chats: open, rename, delete"),
    CommandSpec("/rename", "TITLE", "rename this chat"),
    CommandSpec("/delete", "", "delete this chat (asks for confirmation)"),
    CommandSpec("/search", "[TEXT]", "search every saved chat"),
    CommandSpec("/export", "md|json [PATH]", "save this chat as Markdown or JSON"),
    CommandSpec("/clear", "", "start a new chat (same as /new)"),
    CommandSpec("/help", "", "show this help"),
)
COMMAND_NAMES = tuple(spec.name for spec in COMMANDS)

_METHOD_OPTION = re.compile(r"(?:^|\s)--method(?:=|\s+|$)(\S*)")


@dataclass(frozen=True)
class Command:
    """One line of input, understood.

    `name` is the command without its slash ("edit", "revert", ...) or "ask" for a plain question.
    `text` is the question, the /edit text (without the --method option) or the /edits status filter;
    `edit_id` is set for /revert and /audit ID; `method` for /edit (the chosen or default method, or
    None to let the service choose) and /method (None: show the current default). For /rename `text` is
    the title, for /search the text to look for, for /export the format ("md" or "json") and `path` the
    file (None: the default name in the current folder).
    """

    name: str
    text: str = ""
    edit_id: int | None = None
    method: str | None = None
    path: str | None = None


def usage(name: str) -> str:
    """`/name ARGS` as shown in /help, for error messages."""
    for spec in COMMANDS:
        if spec.name == name:
            return f"{spec.name} {spec.usage}".strip()
    return name


def _help_row(spec: CommandSpec) -> str:
    text = f"{spec.name} {spec.usage}".strip().replace("|", "\\|")  # a bare | would end the table cell
    return f"| `{text}` | {spec.summary} |"


def help_markdown(default_method: str | None = None, methods: Sequence[str] = ALL_METHODS) -> str:
    """The /help text, as Markdown; `methods` are the ones the service accepts."""
    rows = "\n".join(_help_row(spec) for spec in COMMANDS)
    method = default_method or "the engine's default"
    return (
        "**Commands** (anything else is a question; → accepts a suggestion)\n\n"
        "| command | what it does |\n|---|---|\n"
        f"{rows}\n\n"
        f"Methods: {', '.join(methods)}. Default method for /edit: {method}.\n\n"
        "Keys: `F1` this help, `Ctrl+O` the saved chats, `Ctrl+N` a new chat, `Ctrl+F` search the chats, "
        "`Ctrl+A` the audit, `Esc` cancels an answer, `Ctrl+P` the command palette. `↑` (or `Tab`) moves "
        "into the messages: `↑`/`↓` or `k`/`j` select one, `c` copies it, `e` on an answer corrects it "
        "(prefills /edit), `r` asks its question again, `Esc` goes back to the input."
    )


def validate_method(name: str, methods: Sequence[str] = ALL_METHODS) -> str:
    """The method name in canonical (lower) case; CommandError if it is not one of `methods`."""
    method = name.strip().lower()
    if method not in methods:
        raise CommandError(f"unknown method {name!r}: choose one of {', '.join(methods)}")
    return method


def parse_edit_id(arg: str, command: str) -> int:
    """An edit id from `3` or `#3`; CommandError with the command's usage otherwise."""
    text = arg.strip().removeprefix("#")
    if not text.isdigit():
        raise CommandError(f"{arg.strip()!r} is not an edit id: use {usage(command)}" if arg.strip()
                           else f"missing edit id: use {usage(command)}")
    return int(text)


def parse_command(line: str, *, default_method: str | None = None,
                  methods: Sequence[str] = ALL_METHODS) -> Command | None:
    """Understand one line of chat input; None for a blank line. `methods`: those the service accepts.

    A line not starting with "/" is a question. Raises CommandError for an unknown command or bad
    arguments; /edit's text itself is only checked for being non-empty (the service parses it).
    """
    line = line.strip()
    if not line:
        return None
    if not line.startswith("/"):
        return Command("ask", text=line)
    head, *others = line.split(maxsplit=1)  # any white space ends the name: a pasted newline too
    name = head.lower()
    rest = others[0].strip() if others else ""
    if name not in COMMAND_NAMES:
        close = difflib.get_close_matches(name, COMMAND_NAMES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CommandError(f"unknown command {head}: {hint}type /help for the list")
    bare = name[1:]
    if name == "/edit":
        return _parse_edit(rest, default_method, methods)
    if name in ("/revert",):
        return Command(bare, edit_id=parse_edit_id(rest, name))
    if name == "/audit":
        return Command(bare, edit_id=parse_edit_id(rest, name) if rest else None)
    if name == "/method":
        return Command(bare, method=validate_method(rest, methods) if rest else None)
    if name == "/rename":
        if not rest:
            raise CommandError(f"missing title: use {usage(name)}")
        return Command(bare, text=rest)
    if name == "/search":
        return Command(bare, text=" ".join(rest.split()))
    if name == "/export":
        return _parse_export(rest)
    if name == "/edits":
        status = rest.lower()
        if status and status not in STATUSES:
            raise CommandError(f"unknown status {rest!r}: choose one of {', '.join(STATUSES)}")
        return Command(bare, text=status)
    if rest:
        raise CommandError(f"{name} takes no arguments")
    return Command(bare)


def _parse_edit(rest: str, default_method: str | None, methods: Sequence[str]) -> Command:
    method = default_method
    options = list(_METHOD_OPTION.finditer(rest))
    if options:
        value = options[-1].group(1)
        if not value:
            raise CommandError(f"--method needs a value: one of {', '.join(methods)}")
        method = validate_method(value, methods)
        rest = _METHOD_OPTION.sub(" ", rest)
    text = " ".join(rest.split())
    if not text:
        raise CommandError(f"nothing to edit: use {usage('/edit')}, e.g. /edit Eiffel Tower → "
                           "The Eiffel Tower is located in Rome")
    return Command("edit", text=text, method=method)


def _parse_export(rest: str) -> Command:
    format, _, path = rest.partition(" ")
    format = format.lower() or "md"
    if format not in EXPORT_FORMATS:
        raise CommandError(f"unknown export format {format!r}: use {usage('/export')}")
    return Command("export", text=format, path=path.strip() or None)


def complete(value: str, methods: Sequence[str] = ALL_METHODS) -> str | None:
    """The whole input line completed (for an Input suggester), or None when there is nothing to add.

    Completes command names, method names after `/method ` or `--method `, `--method` itself in an
    /edit line, and statuses after `/edits `. What the user typed is kept as typed.
    """
    if not value.startswith("/"):
        return None
    if " " not in value:
        return _extend(value, COMMAND_NAMES)
    head, _, rest = value.partition(" ")
    head = head.lower()
    if head == "/method" and " " not in rest:
        return _extend(value, methods, prefix_len=len(rest))
    if head == "/edits" and " " not in rest:
        return _extend(value, STATUSES, prefix_len=len(rest))
    if head == "/export" and " " not in rest:
        return _extend(value, EXPORT_FORMATS, prefix_len=len(rest))
    if head == "/edit":
        last = rest.rsplit(" ", 1)[-1] if rest else ""
        before_last = rest[: len(rest) - len(last)].rstrip().rsplit(" ", 1)[-1]
        if before_last == "--method":
            return _extend(value, methods, prefix_len=len(last))
        if last.startswith("--") and rest.strip() != last:
            return _extend(value, ("--method",), prefix_len=len(last))
    return None


def _extend(value: str, options: Sequence[str], *, prefix_len: int | None = None) -> str | None:
    """`value` plus the rest of the first option that starts with its last `prefix_len` characters."""
    typed = value if prefix_len is None else value[len(value) - prefix_len:]
    if prefix_len is not None and prefix_len == 0:
        return None  # nothing typed yet: a suggestion would be a guess
    for option in options:
        if option.lower().startswith(typed.lower()) and len(option) > len(typed):
            return value + option[len(typed):]
    return None


class CommandSuggester(Suggester):
    """Completes slash command names, methods, statuses and export formats (see `complete`)."""

    def __init__(self, methods: Sequence[str] = ALL_METHODS) -> None:
        super().__init__(use_cache=True, case_sensitive=True)
        self.methods = tuple(methods)

    async def get_suggestion(self, value: str) -> str | None:
        return complete(value, self.methods)
