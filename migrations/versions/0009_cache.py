"""result cache: jobs' cache key and leader (in-flight dedupe), the cache_entries index

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen copies of the types this revision was written with.
from shared.db import UTCDateTime, utcnow

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cache_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("follows_job_id", sa.String(length=36), nullable=True))
        batch_op.create_index("ix_jobs_client_cache_key", ["client_id", "cache_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_follows_job_id"), ["follows_job_id"], unique=False)

    op.create_table(
        "cache_entries",
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("revision", sa.String(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.Column("last_hit_at", UTCDateTime(), nullable=True),
        sa.Column("hits", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["clients.id"], name=op.f("fk_cache_entries_client_id_clients"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_cache_entries_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("client_id", "key", name=op.f("pk_cache_entries")),
    )
    with op.batch_alter_table("cache_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cache_entries_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_cache_entries_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cache_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cache_entries_created_at"))
        batch_op.drop_index(batch_op.f("ix_cache_entries_job_id"))
    op.drop_table("cache_entries")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_follows_job_id"))
        batch_op.drop_index("ix_jobs_client_cache_key")
        batch_op.drop_column("follows_job_id")
        batch_op.drop_column("cache_key")
