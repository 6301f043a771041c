"""Saved conversations in the ledger database: chats, their messages and each answer's provenance.

Like the edit ledger, every call is one short transaction and returns frozen records
(`kbchat.conversations.records`), never ORM objects. What became of the edits an answer used is read
at the time of asking (a join on `edits`), so a reverted edit shows on the answers it made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from kbchat.conversations.records import ROLES, Chat, ChatMessage, ChatSummary, EditUse, SearchHit
from kbchat.errors import ChatNotFound, KbchatError
from kbchat.ledger.models import Conversation, Edit, Message
from kbchat.ledger.rows import now

TITLE_MAX = 200
SNIPPET = 40  # characters of context either side of a search match
Statuses = Callable[[Sequence[int]], Mapping[int, str]]  # edit ids -> their statuses now


class _Sessions(Protocol):
    def session(self, *, write: bool = False) -> AbstractContextManager[Session]: ...


def clean_title(title: str) -> str:
    """A title on one line, at most TITLE_MAX characters."""
    return " ".join(title.split())[:TITLE_MAX]


class ChatLog:
    """Conversations and messages. `statuses` says what became of edits; by default the `edits` table of
    the same database."""

    def __init__(self, tx: _Sessions, statuses: Statuses | None = None) -> None:
        self._tx = tx
        self._statuses = statuses

    def create(self, title: str = "") -> ChatSummary:
        with self._tx.session(write=True) as session:
            stamp = now()
            row = Conversation(title=clean_title(title), created_at=stamp, updated_at=stamp)
            session.add(row)
            session.flush()
            return _summary(row, 0)

    def list(self) -> list[ChatSummary]:
        """Every conversation, the most recently used first."""
        with self._tx.session() as session:
            counts = (select(Message.conversation_id, func.count(Message.id).label("n"))
                      .group_by(Message.conversation_id).subquery())
            rows = session.execute(
                select(Conversation, func.coalesce(counts.c.n, 0))
                .outerjoin(counts, counts.c.conversation_id == Conversation.id)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
            ).all()
            return [_summary(row, n) for row, n in rows]

    def summary(self, chat_id: int) -> ChatSummary:
        with self._tx.session() as session:
            return _summary(_conversation(session, chat_id), _count(session, chat_id))

    def get(self, chat_id: int) -> Chat:
        """The conversation with all its messages, oldest first, provenance resolved."""
        with self._tx.session() as session:
            head = _summary(_conversation(session, chat_id), _count(session, chat_id))
            rows = session.scalars(select(Message).where(Message.conversation_id == chat_id)
                                   .order_by(Message.id)).all()
            statuses = self._resolve(session, {e["id"] for r in rows for e in _uses(r)})
            return Chat(head, tuple(_message(r, statuses) for r in rows))

    def message(self, message_id: int) -> ChatMessage:
        with self._tx.session() as session:
            row = session.get(Message, message_id)
            if row is None:
                raise ChatNotFound(f"no message #{message_id}")
            return _message(row, self._resolve(session, {e["id"] for e in _uses(row)}))

    def rename(self, chat_id: int, title: str) -> ChatSummary:
        title = clean_title(title)
        if not title:
            raise KbchatError("empty title: type a name for the chat")
        with self._tx.session(write=True) as session:
            row = _conversation(session, chat_id)
            row.title = title
            return _summary(row, _count(session, chat_id))

    def delete(self, chat_id: int) -> None:
        with self._tx.session(write=True) as session:
            _conversation(session, chat_id)
            # Answers first: they refer to their questions in the same table.
            session.execute(delete(Message).where(Message.conversation_id == chat_id,
                                                  Message.reply_to.is_not(None)))
            session.execute(delete(Message).where(Message.conversation_id == chat_id))
            session.execute(delete(Conversation).where(Conversation.id == chat_id))

    def append(self, chat_id: int, role: str, content: str, *, reply_to: int | None = None,
               model: str | None = None, weights: str | None = None, edits: Iterable[EditUse] = (),
               dropped: int = 0) -> ChatMessage:
        """Add a message; the chat moves to the top of the list, and an untitled chat is named after
        its first question."""
        if role not in ROLES:
            raise KbchatError(f"unknown role {role!r}: choose {' or '.join(ROLES)}")
        uses = [{"id": e.id, "kind": e.kind, "label": e.label} for e in edits]
        with self._tx.session(write=True) as session:
            chat = _conversation(session, chat_id)
            if reply_to is not None:
                _question(session, chat_id, reply_to)
            stamp = now()
            row = Message(conversation_id=chat_id, role=role, content=content, created_at=stamp,
                          reply_to=reply_to, model=model, weights=weights,
                          edits=json.dumps(uses) if uses else None, dropped=dropped)
            session.add(row)
            chat.updated_at = stamp
            if not chat.title and role == "user":
                chat.title = clean_title(content)[:60]
            session.flush()
            return _message(row, self._resolve(session, {u["id"] for u in uses}))

    def search(self, text: str, limit: int = 50) -> list[SearchHit]:
        """Messages containing `text` (any case), newest first."""
        needle = " ".join(text.split())
        if not needle:
            raise KbchatError("empty search: type the text to look for")
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._tx.session() as session:
            rows = session.execute(
                select(Message, Conversation.title).join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.content.ilike(pattern, escape="\\")).order_by(Message.id.desc()).limit(limit)
            ).all()
            return [SearchHit(m.conversation_id, title, m.id, m.role, snippet(m.content, needle)) for m, title in rows]

    def _resolve(self, session: Session, ids: set[int]) -> Mapping[int, str]:
        if not ids:
            return {}
        if self._statuses is not None:
            return self._statuses(sorted(ids))
        return dict(session.execute(select(Edit.id, Edit.status).where(Edit.id.in_(ids))).tuples().all())


def snippet(content: str, needle: str) -> str:
    """The text around the first match of `needle`, on one line, with … where it was cut."""
    flat = " ".join(content.split())
    at = flat.lower().find(needle.lower())
    if at < 0:
        return flat[: 2 * SNIPPET]
    start, end = max(0, at - SNIPPET), min(len(flat), at + len(needle) + SNIPPET)
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")


def _conversation(session: Session, chat_id: int) -> Conversation:
    row = session.get(Conversation, chat_id)
    if row is None:
        raise ChatNotFound(f"no chat #{chat_id}: `kbchat chats` lists them")
    return row


def _question(session: Session, chat_id: int, message_id: int) -> Message:
    row = session.get(Message, message_id)
    if row is None or row.conversation_id != chat_id or row.role != "user":
        raise ChatNotFound(f"no question #{message_id} in chat #{chat_id}")
    return row


def _count(session: Session, chat_id: int) -> int:
    return int(session.scalar(select(func.count(Message.id)).where(Message.conversation_id == chat_id)) or 0)


def _summary(row: Conversation, messages: int) -> ChatSummary:
    return ChatSummary(row.id, row.title, row.created_at, row.updated_at, int(messages))


def _uses(row: Message) -> list[dict]:
    return json.loads(row.edits) if row.edits else []


def _message(row: Message, statuses: Mapping[int, str]) -> ChatMessage:
    edits = tuple(EditUse(int(e["id"]), str(e["kind"]), str(e["label"]), statuses.get(int(e["id"]), "unknown"))
                  for e in _uses(row))
    return ChatMessage(row.id, row.conversation_id, row.role, row.content, row.created_at, row.reply_to,
                       row.model, row.weights, edits, row.dropped)
