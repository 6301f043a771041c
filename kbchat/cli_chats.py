"""`kbchat chats …` and `kbchat ask --chat ID`: saved conversations on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kbchat.cli_args import CliError
from kbchat.conversations.export import provenance_line, render
from kbchat.conversations.records import ChatSummary
from kbchat.records import Answer
from kbchat.service import AnswerStream, ChatService


def chats_command(chat: ChatService, args: argparse.Namespace) -> int:
    """list (default), show, search, export, rename, delete."""
    action = args.chats_action or "list"
    if action == "list":
        return _list(chat.chats(), args.json)
    if action == "show":
        return _show(chat, args)
    if action == "search":
        hits = chat.search_chats(args.text, limit=args.limit)
        if args.json:
            print(json.dumps([h.to_json() for h in hits], ensure_ascii=False))
        for hit in [] if args.json else hits:
            print(f"#{hit.chat_id}/{hit.message_id}  {hit.role:<9} {hit.title[:30]:<30}  {hit.snippet}")
        if not hits and not args.json:
            print(f"no message contains {args.text!r}", file=sys.stderr)
        return 0
    if action == "export":
        return _export(chat, args)
    if action == "rename":
        summary = chat.rename_chat(args.id, args.title)
        print(json.dumps(summary.to_json()) if args.json else f"chat #{summary.id} is now {summary.title!r}")
        return 0
    if not args.yes:
        raise CliError(f"deleting chat #{args.id} cannot be undone: add --yes to confirm")
    chat.delete_chat(args.id)
    print(json.dumps({"id": args.id, "deleted": True}) if args.json else f"deleted chat #{args.id}")
    return 0


def _list(summaries: list[ChatSummary], as_json: bool) -> int:
    if as_json:
        print(json.dumps([s.to_json() for s in summaries], ensure_ascii=False))
        return 0
    if not summaries:
        print("no saved chats yet: `kbchat ask --chat new \"…\"` or the TUI starts one", file=sys.stderr)
    for s in summaries:
        print(f"#{s.id:<5} {s.updated_at:%Y-%m-%d %H:%M}  {s.messages:>4} msgs  {s.title or '(untitled)'}")
    return 0


def _show(chat: ChatService, args: argparse.Namespace) -> int:
    conversation = chat.chat(args.id)
    if args.json:
        print(json.dumps(conversation.to_json(), ensure_ascii=False))
        return 0
    for m in conversation.messages:
        who = "you" if m.role == "user" else "kbchat"
        print(f"[{m.id}] {who}: {m.content}")
        if m.role == "assistant":
            print(f"      ({provenance_line(m)})")
    return 0


def _export(chat: ChatService, args: argparse.Namespace) -> int:
    text = render(chat.chat(args.id), args.format)
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    target = Path(args.output).expanduser()
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from exc
    print(f"wrote chat #{args.id} to {target}", file=sys.stderr)
    return 0


def ask_in_chat(chat: ChatService, args: argparse.Namespace) -> AnswerStream:
    """The answer stream for `kbchat ask --chat ID|new`: the question goes into that saved chat."""
    chat_id = chat.new_chat().id if args.chat == "new" else _chat_id(args.chat)
    return chat.say(chat_id, args.text, memory=not args.no_memory, max_new_tokens=args.max_tokens)


def _chat_id(text: str) -> int:
    try:
        return int(text.lstrip("#"))
    except ValueError:
        raise CliError(f"--chat takes a chat number or `new`, not {text!r}") from None


def answer_json(answer: Answer) -> dict:
    """`kbchat ask --json`'s output."""
    data = {"text": answer.text, "used_edits": list(answer.used_edits), "tokens": answer.tokens,
            "seconds": round(answer.seconds, 3)}
    if answer.message_id is not None:
        data.update(message_id=answer.message_id, question_id=answer.question_id, dropped=answer.dropped)
    return data
