"""A saved conversation as Markdown (to read or paste) and as JSON (everything, provenance included)."""

from __future__ import annotations

import json

from kbchat.conversations.records import Chat, ChatMessage

EXPORT_FORMATS = ("md", "json")


def provenance_line(message: ChatMessage) -> str:
    """What an answer was made with, on one line: model, edits (and what became of them), weights."""
    parts = [f"model {message.model}"] if message.model else []
    parts += [use.note() for use in message.edits] or ["no edits used"]
    if message.weights:
        parts.append(f"weights {message.weights[:12]}")
    if message.dropped:
        parts.append(f"{message.dropped} earlier turn(s) left out of the context")
    return "; ".join(parts)


def to_markdown(chat: Chat) -> str:
    lines = [f"# {chat.summary.title or 'Untitled chat'}", "",
             f"Chat #{chat.id}, started {chat.summary.created_at:%Y-%m-%d %H:%M} UTC.", ""]
    questions = {m.id: m for m in chat.messages if m.role == "user"}
    for message in chat.messages:
        if message.role == "user":
            lines += [f"**You** ({message.created_at:%Y-%m-%d %H:%M}):", "", message.content, ""]
            continue
        again = message.reply_to is not None and any(
            m.reply_to == message.reply_to and m.id < message.id for m in chat.messages)
        head = "**kbchat**" + (f", asked again ({questions[message.reply_to].content!r})"
                               if again and message.reply_to in questions else "")
        lines += [f"{head}:", "", message.content, "", f"> {provenance_line(message)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_json(chat: Chat) -> str:
    return json.dumps({"format": "kbchat-chat/1", **chat.to_json()}, ensure_ascii=False, indent=2) + "\n"


def render(chat: Chat, format: str) -> str:
    """The chat in `format` ("md" or "json"); ValueError for another format."""
    if format == "md":
        return to_markdown(chat)
    if format == "json":
        return to_json(chat)
    raise ValueError(f"unknown chat export format {format!r}: choose md or json")
