"""Rollouts (and approvals waiting behind one) keep the correlation id of the chain that started them;
their steps continue it.

Revision ID: 0012
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("rollouts", "rollout_waiting"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("correlation_id", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    for table in ("rollout_waiting", "rollouts"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("correlation_id")
