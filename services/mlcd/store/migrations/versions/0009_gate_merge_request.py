"""Gates link to the merge request that changed the model's pipeline (looked up from the commit).

Revision ID: 0009
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gates") as batch:
        batch.add_column(sa.Column("merge_request_iid", sa.Integer, nullable=True))
        batch.add_column(sa.Column("merge_request_url", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("gates") as batch:
        batch.drop_column("merge_request_url")
        batch.drop_column("merge_request_iid")
