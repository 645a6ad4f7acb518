"""styles and their versions (LoRA slots), generation metrics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Frozen copies of the types this revision was written with.
from shared.db import UTCDateTime, utcnow

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "styles",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_styles_client_id_clients"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_styles")),
        sa.UniqueConstraint("client_id", "name", name=op.f("uq_styles_client_id_name")),
    )
    with op.batch_alter_table("styles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_styles_client_id"), ["client_id"], unique=False)

    op.create_table(
        "style_versions",
        sa.Column("style_id", sa.String(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("base_profile", sa.String(length=32), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("params", JSON_TYPE, nullable=True),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'ready', 'failed', 'canceled')",
            name=op.f("ck_style_versions_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["style_id"], ["styles.id"], name=op.f("fk_style_versions_style_id_styles"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("style_id", "version", name=op.f("pk_style_versions")),
    )

    op.create_table(
        "generation_metrics",
        sa.Column("id", ID_TYPE, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=utcnow(), nullable=False),
        sa.Column("queue_wait_s", sa.Float(), nullable=False),
        sa.Column("load_s", sa.Float(), nullable=True),
        sa.Column("inference_s", sa.Float(), nullable=True),
        sa.Column("store_s", sa.Float(), nullable=True),
        sa.Column("total_s", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("num_images", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=True),
        sa.Column("revision", sa.String(length=255), nullable=True),
        sa.Column("identity_refs", sa.Integer(), nullable=False),
        sa.Column("style_ref", sa.Boolean(), nullable=False),
        sa.Column("embeddings_cached", sa.Integer(), nullable=False),
        sa.Column("lora", sa.String(length=120), nullable=True),
        sa.Column("lora_resident", sa.Boolean(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("gpu", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=120), nullable=True),
        sa.Column("model_load_s", sa.Float(), nullable=True),
        sa.Column("peak_gpu_memory_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_metrics")),
    )
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_generation_metrics_created", ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_generation_metrics_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_generation_metrics_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generation_metrics_user_id"))
        batch_op.drop_index(batch_op.f("ix_generation_metrics_job_id"))
        batch_op.drop_index("ix_generation_metrics_created")
    op.drop_table("generation_metrics")
    op.drop_table("style_versions")
    with op.batch_alter_table("styles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_styles_client_id"))
    op.drop_table("styles")
