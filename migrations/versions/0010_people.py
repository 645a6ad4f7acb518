"""people: the face found in each subject version; regions and faces in generation metrics

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subject_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("face_box", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                                      nullable=True))
        batch_op.add_column(sa.Column("face_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("face_detector", sa.String(length=80), nullable=True))
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("regions", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("faces_found", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.drop_column("faces_found")
        batch_op.drop_column("regions")
    with op.batch_alter_table("subject_versions", schema=None) as batch_op:
        batch_op.drop_column("face_detector")
        batch_op.drop_column("face_count")
        batch_op.drop_column("face_box")
