"""initial schema: edits, checks, meta

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies, not imports from kbchat: a migration must keep meaning what it meant when written.
STATUSES = ("active", "reverted", "failed", "superseded", "committed")
KINDS = ("memory", "weight")


def _in_list(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "edits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw_text", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("relation", sa.Text(), nullable=False),
        sa.Column("target", sa.String(length=500), nullable=False),
        sa.Column("target_true", sa.String(length=500), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.Column("committed_into", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("hparams", sa.Text(), nullable=True),
        sa.Column("delta", sa.LargeBinary(), nullable=True),
        sa.Column("delta_sha256", sa.String(length=64), nullable=True),
        sa.Column("weights_before", sa.String(length=64), nullable=True),
        sa.Column("weights_after", sa.String(length=64), nullable=True),
        sa.Column("model_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedder", sa.String(length=200), nullable=True),
        sa.Column("reverted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("row_sha256", sa.String(length=64), nullable=False),
        sa.CheckConstraint(_in_list("status", STATUSES), name=op.f("ck_edits_status")),
        sa.CheckConstraint(_in_list("kind", KINDS), name=op.f("ck_edits_kind")),
        sa.ForeignKeyConstraint(["superseded_by"], ["edits.id"], name=op.f("fk_edits_superseded_by_edits")),
        sa.ForeignKeyConstraint(["committed_into"], ["edits.id"], name=op.f("fk_edits_committed_into_edits")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edits")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_edits_status"), "edits", ["status"], unique=False)

    op.create_table(
        "checks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("edit_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("probe", sa.Text(), nullable=False),
        sa.Column("expected", sa.Text(), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["edit_id"], ["edits.id"], name=op.f("fk_checks_edit_id_edits"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checks")),
    )
    op.create_index(op.f("ix_checks_edit_id"), "checks", ["edit_id"], unique=False)

    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meta")),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_index(op.f("ix_checks_edit_id"), table_name="checks")
    op.drop_table("checks")
    op.drop_index(op.f("ix_edits_status"), table_name="edits")
    op.drop_table("edits")
