"""subject_versions by image: an index on sha256 (subject deletion asks whether another subject has the same image)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subject_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subject_versions_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subject_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subject_versions_sha256"))
