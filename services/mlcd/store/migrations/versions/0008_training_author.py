"""Training author: who caused each run (pusher, uploader, requester), carried to its candidate's gate.

Revision ID: 0008
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("author", sa.String(200), nullable=False, server_default=""))
    with op.batch_alter_table("training_models") as batch:
        batch.add_column(sa.Column("pending_author", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_models") as batch:
        batch.drop_column("pending_author")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("author")
