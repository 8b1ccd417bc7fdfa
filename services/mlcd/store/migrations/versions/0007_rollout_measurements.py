"""Rollout measurements: each analysis check's value at each step, with its thresholds, for the canary charts.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollout_measurements",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", _BigId, nullable=False),
        sa.Column("phase", sa.String(20), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("traffic_percent", sa.Integer, nullable=False),
        sa.Column("check_name", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("min_value", sa.Float, nullable=True),
        sa.Column("max_value", sa.Float, nullable=True),
        sa.Column("passed", sa.Boolean, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rollout_measurements_rollout", "rollout_measurements", ["rollout_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_rollout_measurements_rollout", table_name="rollout_measurements")
    op.drop_table("rollout_measurements")
