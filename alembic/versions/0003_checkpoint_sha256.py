"""checkpoints: sha256 and corrupt

Each checkpoint's sha256 is recorded when it is written and checked on download and on every load;
`corrupt` marks one whose file no longer matches, so that a job's best falls back past it.

Revision ID: 0003
Revises: 0001 (becomes 0002 once 0002_openai is merged)
Create Date: 2026-11-29 03:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("corrupt", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("corrupt")
        batch_op.drop_column("sha256")
