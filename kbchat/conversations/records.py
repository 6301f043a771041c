"""Value types of saved conversations, shared by the service, its clients and the wire (JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

ROLES = ("user", "assistant")
LIVE = ("active",)  # an edit in any other status no longer acts the way it did when it was used


@dataclass(frozen=True)
class EditUse:
    """An edit an answer was made with, and what has become of it since."""

    id: int
    kind: str  # memory | weight
    label: str  # "Eiffel Tower → Rome", as the edit read when the answer was made
    status: str  # the edit's status now ("unknown" when the ledger no longer has it)

    @property
    def since(self) -> str | None:
        """'reverted', 'superseded', … when the edit no longer acts as it did; None while active."""
        return None if self.status in LIVE else self.status

    def note(self) -> str:
        """'answered with edit #3 (Eiffel Tower → Rome), since reverted'."""
        tail = f", since {self.since}" if self.since else ""
        return f"answered with {self.kind} edit #{self.id} ({self.label}){tail}"


@dataclass(frozen=True)
class ChatMessage:
    """One message of a saved conversation. Answers carry their provenance: the model, the edits that
    acted (memory edits retrieved, active weight edits), the weights' fingerprint, and how many earlier
    turns were left out of the model's context."""

    id: int
    chat_id: int
    role: str  # user | assistant
    content: str
    created_at: datetime
    reply_to: int | None = None  # an answer's question
    model: str | None = None
    weights: str | None = None
    edits: tuple[EditUse, ...] = ()
    dropped: int = 0

    @property
    def stale(self) -> tuple[EditUse, ...]:
        """The edits this answer used that have since been reverted, superseded or committed."""
        return tuple(e for e in self.edits if e.since)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat(),
                "edits": [asdict(e) for e in self.edits]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatMessage:
        return cls(id=int(data["id"]), chat_id=int(data["chat_id"]), role=str(data["role"]),
                   content=str(data["content"]), created_at=datetime.fromisoformat(data["created_at"]),
                   reply_to=data.get("reply_to"), model=data.get("model"), weights=data.get("weights"),
                   edits=tuple(EditUse(**e) for e in data.get("edits", ())), dropped=int(data.get("dropped", 0)))


@dataclass(frozen=True)
class ChatSummary:
    """A conversation as the chat list shows it."""

    id: int
    title: str
    created_at: datetime
    updated_at: datetime
    messages: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatSummary:
        return cls(id=int(data["id"]), title=str(data["title"]),
                   created_at=datetime.fromisoformat(data["created_at"]),
                   updated_at=datetime.fromisoformat(data["updated_at"]), messages=int(data["messages"]))


@dataclass(frozen=True)
class Chat:
    """A whole conversation, messages oldest first."""

    summary: ChatSummary
    messages: tuple[ChatMessage, ...]

    @property
    def id(self) -> int:
        return self.summary.id

    def answers_to(self, question_id: int) -> list[ChatMessage]:
        """The answers given to one question, oldest first (more than one after "ask again")."""
        return [m for m in self.messages if m.reply_to == question_id]

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary.to_json(), "messages": [m.to_json() for m in self.messages]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chat:
        return cls(ChatSummary.from_json(data["summary"]), tuple(ChatMessage.from_json(m) for m in data["messages"]))


@dataclass(frozen=True)
class SearchHit:
    """A message that matched a search, with a snippet around the match."""

    chat_id: int
    title: str
    message_id: int
    role: str
    snippet: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchHit:
        return cls(**{k: data[k] for k in ("chat_id", "title", "message_id", "role", "snippet")})
