"""generation_slots: per-owner generations in flight, counted across API processes

Each generation in flight holds a row; the API process that holds it renews `expires_at`, so the slots
of a process that died expire.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:40:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generation_slots",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=40), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_generation_slots_owner", "generation_slots", ["owner"])
    op.create_index("ix_generation_slots_holder", "generation_slots", ["holder"])


def downgrade() -> None:
    op.drop_index("ix_generation_slots_holder", table_name="generation_slots")
    op.drop_index("ix_generation_slots_owner", table_name="generation_slots")
    op.drop_table("generation_slots")
