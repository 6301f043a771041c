"""Pure formatting of saved conversations: answers' provenance, the chat list, search hits, the empty
state, export paths and the clipboard notice. No widgets, no threads: testable without a UI."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from textual.content import Content

from kbchat.conversations.records import ChatMessage, ChatSummary, EditUse, SearchHit
from kbchat.records import Answer

UNTITLED = "Untitled chat"
NEW_CHAT = "New chat"

EMPTY_STATE = Content.from_markup(
    "[b]Three things to try first[/b]\n\n"
    "[b $accent]1[/]  [b]Ask a question[/b]: type it below and press Enter\n"
    "[b $accent]2[/]  [b]Correct the answer[/b]: /edit SUBJECT → FACT\n"
    "   [dim]e.g.[/dim] /edit Eiffel Tower → The Eiffel Tower is located in Rome\n"
    "   [dim](or select the answer with ↑ and press e)[/dim]\n"
    "[b $accent]3[/]  [b]Open the audit[/b] (every edit, its checks, revert): [b]Ctrl+A[/b]\n\n"
    "[dim]F1 or /help: every command and key · Ctrl+O: your saved chats[/dim]"
)
_MARKUP = re.compile(r"(\*\*|__|\*|`|~~)")


def plain_text(markdown: str) -> str:
    """`markdown` without emphasis and code marks, its white space folded."""
    return " ".join(_MARKUP.sub("", markdown).split())


def dropped_line(dropped: int) -> str:
    """Why the model did not see the whole conversation ("" when it did)."""
    if dropped <= 0:
        return ""
    if dropped == 1:
        return "1 earlier turn was left out: it does not fit in the model's context"
    return f"{dropped} earlier turns were left out: they do not fit in the model's context"


def _edit_link(edit_id: int) -> Content:
    return Content.from_markup(f"[@click=app.audit({int(edit_id)})]edit #{int(edit_id)}[/]")


def edit_use_content(use: EditUse) -> Content:
    """One edit an answer used, its id a link to the edit's detail: "memory: edit #3 (Eiffel Tower → Rome)",
    or, when the edit no longer acts as it did, "⚠ answered with memory edit #3 (…), since reverted"."""
    if use.since:
        return Content.assemble(
            (f"⚠ answered with {use.kind} ", "$warning"), _edit_link(use.id).stylize("$warning"),
            (f" ({use.label}), ", "$warning"), (f"since {use.since}", "bold $warning"),
        )
    head = "memory" if use.kind == "memory" else "weights"
    return Content.assemble((f"{head}: ", "bold"), _edit_link(use.id), (f" ({use.label})", "dim"))


def provenance_content(message: ChatMessage | None, answer: Answer | None = None, *,
                       cancelled: bool = False, failed: bool = False) -> Content:
    """The dim lines under an answer: the edits it was made with (or "no edits"), then whether it was cut
    short, then the earlier turns left out of the model's context. `message` is the saved answer; without
    one (not saved, or the service could not say) what `answer` says is shown."""
    parts: list[Content] = []
    if message is not None:
        parts += [edit_use_content(use) for use in message.edits]
    elif answer is not None:
        ids = dict.fromkeys((*answer.used_edits, *answer.weight_edits))
        parts += [Content.assemble(("memory: " if i in answer.used_edits else "weights: ", "bold"), _edit_link(i))
                  for i in ids]
    if not parts and (message is not None or (answer is not None and not failed)):
        parts.append(Content.styled("no edits", "dim"))
    if cancelled:
        parts.append(Content.styled("(cancelled)", "italic"))
    if failed:
        parts.append(Content.styled("(failed)", "italic red"))
    lines = [Content(" · ").join(parts)] if parts else []
    dropped = dropped_line(message.dropped if message is not None else answer.dropped if answer else 0)
    if dropped:
        lines.append(Content.styled(dropped, "dim italic"))
    return Content("\n").join(lines)


def chat_title(summary: ChatSummary | None) -> str:
    """The chat's title as shown (NEW_CHAT before a chat exists, UNTITLED for an empty title)."""
    if summary is None:
        return NEW_CHAT
    return summary.title or UNTITLED


def chat_row(summary: ChatSummary, *, current: bool = False) -> Content:
    """One entry of the chat list: "● title" then a dim line with its size and when it was last used."""
    count = f"{summary.messages} message{'' if summary.messages == 1 else 's'}"
    return Content.assemble(
        ("● " if current else "  ", "bold $accent"), (chat_title(summary), "bold" if current else ""),
        ("\n  ", ""), (f"#{summary.id} · {count} · {summary.updated_at:%Y-%m-%d %H:%M}", "dim"),
    )


def hit_row(hit: SearchHit, needle: str) -> Content:
    """One search result: the chat's title, then who said it and the snippet with `needle` highlighted."""
    who = "you" if hit.role == "user" else "kbchat"
    snippet = Content(plain_text(hit.snippet))
    if needle.strip():
        pattern = re.compile(re.escape(" ".join(needle.split())), re.IGNORECASE)
        snippet = snippet.highlight_regex(pattern, style="bold $accent")
    return Content.assemble((hit.title or UNTITLED, "bold"), "\n  ", (f"{who}: ", "dim"), snippet)


def export_path(chat_id: int, format: str, path: str | None, cwd: Path) -> Path:
    """Where `/export` writes: `path` (relative to `cwd`; into it when it is a folder), by default
    `kbchat-chat-<id>.<format>` in `cwd`."""
    name = f"kbchat-chat-{chat_id}.{format}"
    if not path:
        return cwd / name
    target = Path(path).expanduser()
    if not target.is_absolute():
        target = cwd / target
    return target / name if target.is_dir() else target


# Terminals known to honour OSC 52 (the escape sequence `App.copy_to_clipboard` sends).
_OSC52_PROGRAMS = ("iTerm.app", "WezTerm", "ghostty", "kitty", "Alacritty", "foot", "rio", "Tabby")


def copied_notice(what: str, env: Mapping[str, str]) -> tuple[str, str]:
    """The notification after copying `what` ("the answer"), with its severity: the copy is sent with
    OSC 52, which some terminals ignore, and nothing tells the app whether it worked."""
    program, term = env.get("TERM_PROGRAM", ""), env.get("TERM", "")
    if program == "Apple_Terminal":
        return (f"Copied {what}, but macOS Terminal ignores clipboard requests (OSC 52): select the text "
                "with the mouse instead", "warning")
    if env.get("TMUX"):
        return (f"Copied {what} (OSC 52): inside tmux this needs `set -g set-clipboard on`", "information")
    if program in _OSC52_PROGRAMS or env.get("WT_SESSION") or any(t in term for t in ("kitty", "alacritty", "foot")):
        return f"Copied {what} to the clipboard", "information"
    return (f"Copied {what} (OSC 52): if your terminal does not support it, nothing reached the clipboard; "
            "select the text with the mouse instead", "information")
