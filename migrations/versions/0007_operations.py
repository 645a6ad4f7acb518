"""operations: feedback, paused queues and clients, the A/B variant of each generation metrics row

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen copies of the types this revision was written with.
from shared.db import UTCDateTime, utcnow

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", UTCDateTime(), nullable=True))
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=16), nullable=True))

    op.create_table(
        "feedback",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("profile", sa.String(length=32), nullable=True),
        sa.Column("variant", sa.String(length=16), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name=op.f("ck_feedback_rating_range")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index("ix_feedback_created", ["created_at"], unique=False)
        batch_op.create_index("ix_feedback_client_user", ["client_id", "user_id"], unique=False)

    op.create_table(
        "paused_queues",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_paused_queues")),
    )


def downgrade() -> None:
    op.drop_table("paused_queues")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_feedback_client_user")
        batch_op.drop_index("ix_feedback_created")
    op.drop_table("feedback")
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.drop_column("variant")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("paused_at")
