"""style training: a trained version is its own job (lease, progress, loss, checkpoint), and its training images

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen copies of the types this revision was written with.
from shared.db import UTCDateTime, utcnow

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("style_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("queue", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("requeues", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("published_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("started_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("lease_until", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("worker", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("cancel_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("progress_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_total", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("loss", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_step", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("training_data_deleted_at", UTCDateTime(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_style_versions_job_id"), ["job_id"])
        batch_op.create_index("ix_style_versions_status_lease", ["status", "lease_until"], unique=False)

    op.create_table(
        "training_images",
        sa.Column("style_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.Text(), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("caption", sa.Text(), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.ForeignKeyConstraint(
            ["style_id", "version"], ["style_versions.style_id", "style_versions.version"],
            name=op.f("fk_training_images_style_id_style_versions"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("style_id", "version", "index", name=op.f("pk_training_images")),
    )
    with op.batch_alter_table("training_images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_images_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_images_user_id"))
    op.drop_table("training_images")

    with op.batch_alter_table("style_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_style_versions_status_lease")
        batch_op.drop_constraint(batch_op.f("uq_style_versions_job_id"), type_="unique")
        for column in ("training_data_deleted_at", "webhook_url", "checkpoint_step", "loss", "progress_total",
                       "progress_step", "cancel_reason", "worker", "lease_until", "started_at", "published_at",
                       "requeues", "attempt", "queue", "job_id"):
            batch_op.drop_column(column)
