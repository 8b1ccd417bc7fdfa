"""Rollouts: state step by step, one running rollout per model, approvals waiting behind it.

Revision ID: 0004
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("previous_version", sa.String(100), nullable=True),
        sa.Column("previous_artifact_uri", sa.Text, nullable=True),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("next_analysis_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("cause_event_id", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rollouts_model_id", "rollouts", ["model", "id"])
    op.create_index(
        "ux_rollouts_one_running_per_model",
        "rollouts",
        ["model"],
        unique=True,
        postgresql_where=sa.text("state = 'running'"),
        sqlite_where=sa.text("state = 'running'"),
    )
    op.create_table(
        "rollout_waiting",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("cause_event_id", sa.String(200), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_waiting")
    op.drop_index("ux_rollouts_one_running_per_model", table_name="rollouts")
    op.drop_index("ix_rollouts_model_id", table_name="rollouts")
    op.drop_table("rollouts")
