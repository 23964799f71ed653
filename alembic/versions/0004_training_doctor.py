"""training doctor: reference losses of corpora and jobs, a job's diagnosis

`corpora.reference_losses` holds what the simplest models (unigram, bigram) score on the corpus's
default split, computed at upload; `jobs.reference_losses` those of the job's own split, and
`jobs.diagnosis` the training doctor's latest reading of the run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:40:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("corpora", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference_losses", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference_losses", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("diagnosis", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("diagnosis")
        batch_op.drop_column("reference_losses")
    with op.batch_alter_table("corpora", schema=None) as batch_op:
        batch_op.drop_column("reference_losses")
