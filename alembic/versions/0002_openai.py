"""the OpenAI-compatible API: a job's validation file, requested model, suffix, and deleted fine-tuned model

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("validation_corpus_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("openai_model", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("suffix", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("model_deleted_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("model_deleted_at")
        batch_op.drop_column("suffix")
        batch_op.drop_column("openai_model")
        batch_op.drop_column("validation_corpus_id")
