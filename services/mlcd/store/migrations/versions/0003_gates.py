"""Promotion gates, their audit log and approvals, and the monitoring debounce table.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gates",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("champion_version", sa.String(100), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("approver_groups", sa.JSON, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("project", sa.String(300), nullable=False),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("cause_event_id", sa.String(200), nullable=False, unique=True),
    )
    op.create_index("ix_gates_state_model", "gates", ["state", "model"])
    op.create_table(
        "gate_audit",
        sa.Column("seq", _BigId, primary_key=True, autoincrement=True),
        sa.Column("gate_id", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_gate_audit_gate", "gate_audit", ["gate_id", "seq"])
    op.create_table(
        "gate_approvals",
        sa.Column("gate_id", sa.String(16), primary_key=True),
        sa.Column("actor", sa.String(200), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "monitoring_debounce",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("action", sa.String(16), primary_key=True),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("monitoring_debounce")
    op.drop_table("gate_approvals")
    op.drop_index("ix_gate_audit_gate", "gate_audit")
    op.drop_table("gate_audit")
    op.drop_index("ix_gates_state_model", "gates")
    op.drop_table("gates")
