"""Rollout control: the step's start (for progress_deadline), its phase, and on-call requests.

Revision ID: 0006
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("phase", sa.String(20), nullable=False, server_default="step"))
        batch.add_column(sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("requested", sa.String(20), nullable=False, server_default=""))
        batch.add_column(sa.Column("guard_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("guard_until")
        batch.drop_column("requested")
        batch.drop_column("step_started_at")
        batch.drop_column("phase")
