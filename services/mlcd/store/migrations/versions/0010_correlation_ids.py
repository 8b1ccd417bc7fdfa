"""Training runs (and a model's queued follow-up) keep the correlation id of the chain that asked for them.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("correlation_id", sa.String(200), nullable=False, server_default=""))
    with op.batch_alter_table("training_models") as batch:
        batch.add_column(sa.Column("pending_correlation_id", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_models") as batch:
        batch.drop_column("pending_correlation_id")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("correlation_id")
