"""Training: per-model trainer state (lock, coalesced follow-up, newest data) and training runs.

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
    op.create_table(
        "training_models",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("pending_event_id", sa.String(200), nullable=True),
        sa.Column("pending_data_uri", sa.Text, nullable=True),
        sa.Column("pending_reason", sa.Text, nullable=True),
        sa.Column("pending_commit", sa.String(64), nullable=True),
        sa.Column("last_data_uri", sa.Text, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "training_runs",
        sa.Column("run_name", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("trigger_event_id", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("data_uri", sa.Text, nullable=False),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("pipeline_version", sa.String(200), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("checks", sa.Integer, nullable=False),
        sa.Column("next_check_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
    )
    op.create_index("ix_training_runs_model_state", "training_runs", ["model", "state"])
    op.create_index("ix_training_runs_state_next_check", "training_runs", ["state", "next_check_at"])


def downgrade() -> None:
    op.drop_table("training_runs")
    op.drop_table("training_models")
