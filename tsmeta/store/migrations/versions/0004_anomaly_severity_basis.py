"""Anomaly severity and forecast basis (cold start and fallbacks visible to analysts).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("severity", sa.String(8)))
        batch.add_column(sa.Column("basis", sa.String(8)))


def downgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("basis")
        batch.drop_column("severity")
