"""Anomaly alert: the first point of a run of anomalies (more surprising than any point of
its series since the start of the night before). Rows written before it have NULL.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("alert", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("alert")
