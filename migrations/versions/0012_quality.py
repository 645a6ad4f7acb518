"""quality: final or draft in generation metrics and feedback (the quality numbers split by it)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: rows from before qualities read as final (``api.quality_numbers``), with no rewrite.
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quality", sa.String(length=16), nullable=True))
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quality", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_column("quality")
    with op.batch_alter_table("generation_metrics", schema=None) as batch_op:
        batch_op.drop_column("quality")
