"""ORM tables of the ledger database: edits, checks, meta (migration 0001) and saved conversations
(0002). `alembic check` guards drift between these and the migrations."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kbchat.config import KINDS, STATUSES  # noqa: E402,F401  (one home: kbchat.config)

# Explicit constraint names keep migrations stable across backends (and let batch mode on SQLite
# find constraints by name when a later migration alters them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that always hands back aware UTC datetimes.

    SQLite stores no offset, so values are converted to UTC before they are written and naive values
    read back are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores aware UTC timestamps only")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Edit(Base):
    """One requested edit and everything needed to re-apply, revert or audit it."""

    __tablename__ = "edits"
    __table_args__ = (
        CheckConstraint(_in_list("status", STATUSES), name="status"),
        CheckConstraint(_in_list("kind", KINDS), name="kind"),
        # AUTOINCREMENT: ids are shown to users and referenced by other rows, so never reuse one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    raw_text: Mapped[str] = mapped_column(Text, nullable=False)
    subject: Mapped[str] = mapped_column(String(500), nullable=False)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    relation: Mapped[str] = mapped_column(Text, nullable=False)  # prompt with `{}` for the subject
    target: Mapped[str] = mapped_column(String(500), nullable=False)
    target_true: Mapped[str | None] = mapped_column(String(500), nullable=True)
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    superseded_by: Mapped[int | None] = mapped_column(Integer, ForeignKey("edits.id"), nullable=True)
    committed_into: Mapped[int | None] = mapped_column(Integer, ForeignKey("edits.id"), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)
    hparams: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object
    delta: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    delta_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weights_before: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weights_after: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    embedder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reverted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    row_sha256: Mapped[str] = mapped_column(String(64), nullable=False)


class Check(Base):
    """One probe run against an edit (before and after), e.g. a reliability or locality check."""

    __tablename__ = "checks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    edit_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("edits.id", ondelete="CASCADE"), nullable=False, index=True
    )
    metric: Mapped[str] = mapped_column(String(32), nullable=False)
    mode: Mapped[str] = mapped_column(String(32), nullable=False)
    probe: Mapped[str] = mapped_column(Text, nullable=False)
    expected: Mapped[str] = mapped_column(Text, nullable=False)
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Meta(Base):
    """Small key/value settings that belong with the ledger (e.g. the model it was built for)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class Conversation(Base):
    """A saved chat. Its messages go with it when it is deleted."""

    __tablename__ = "conversations"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


class Message(Base):
    """One question or answer. An answer's provenance is stored as it was when the answer was made
    (`edits`: JSON list of {id, kind, label}); what became of those edits is read from `edits` rows."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(_in_list("role", ("user", "assistant")), name="role"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    reply_to: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=True
    )
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    weights: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edits: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    dropped: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
