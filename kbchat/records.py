"""Plain value types shared by the engine and its clients (CLI, TUI, server)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ParsedEdit:
    """What `/edit` understood: a ROME-style request plus the user's raw text."""

    raw_text: str
    subject: str
    prompt: str  # contains the subject, ends right before the target
    target: str
    fact: str  # the sentence as the user stated it (prompt + target for the explicit form)

    @property
    def relation(self) -> str:
        """The prompt with `{}` in place of the subject: what "same subject and relation" compares."""
        return self.prompt.replace(self.subject, "{}", 1)


@dataclass(frozen=True)
class CheckRecord:
    metric: str  # reliability | generalization | locality | portability | fluency
    mode: str  # teacher_forced | generation
    probe: str
    expected: str
    before: str | None
    after: str | None
    passed: bool | None  # None: not yet run
    score: float | None = None


@dataclass(frozen=True)
class EditRecord:
    id: int
    created_at: datetime
    raw_text: str
    subject: str
    prompt: str
    target: str
    method: str
    kind: str  # memory | weight
    status: str  # active | reverted | failed | superseded | committed
    target_true: str | None = None
    error: str | None = None
    superseded_by: int | None = None
    reverted_at: datetime | None = None
    notes: str | None = None
    checks: tuple[CheckRecord, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d["reverted_at"] = self.reverted_at.isoformat() if self.reverted_at else None
        d["checks"] = [asdict(c) for c in self.checks]
        return d


@dataclass(frozen=True)
class Answer:
    """A finished answer and what it was made with.

    used_edits: the memory edits that acted on it. weight_edits / weights: the active weight edits and
    the weights' fingerprint when it was generated (None where the service cannot tell). In a saved
    conversation, `message_id` is the stored answer, `question_id` its question, and `dropped` the
    number of earlier turns left out because they did not fit in the model's context.
    """

    text: str
    used_edits: tuple[int, ...] = ()
    tokens: int = 0
    seconds: float = 0.0
    weight_edits: tuple[int, ...] = ()
    weights: str | None = None
    message_id: int | None = None
    question_id: int | None = None
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "used_edits": list(self.used_edits), "weight_edits": list(self.weight_edits)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**{**known, "used_edits": tuple(data.get("used_edits", ())),
                      "weight_edits": tuple(data.get("weight_edits", ()))})


@dataclass(frozen=True)
class EngineInfo:
    model: str
    device: str
    ledger: str
    active_memory_edits: int
    active_weight_edits: int

    @property
    def active_edits(self) -> int:
        return self.active_memory_edits + self.active_weight_edits


@dataclass(frozen=True)
class Progress:
    """One progress event from a long operation (model load, statistics, optimisation, audit)."""

    stage: str
    step: int = 0
    total: int | None = None
    message: str = ""
    loss: float | None = None


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """Default progress sink."""
