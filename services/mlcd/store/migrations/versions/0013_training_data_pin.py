"""Training data pins: each run (and a model's newest batch and queued follow-up) keeps the ETag and object
version of the batch as validated, so the run reads those bytes and no later upload to the same key.

Revision ID: 0013
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("data_etag", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("data_version_id", sa.Text, nullable=False, server_default=""))
    with op.batch_alter_table("training_models") as batch:
        for column in (
            "last_data_etag",
            "last_data_version_id",
            "pending_data_etag",
            "pending_data_version_id",
        ):
            batch.add_column(sa.Column(column, sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_models") as batch:
        for column in (
            "pending_data_version_id",
            "pending_data_etag",
            "last_data_version_id",
            "last_data_etag",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("data_version_id")
        batch.drop_column("data_etag")
