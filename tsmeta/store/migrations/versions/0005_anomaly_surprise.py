"""Anomaly surprise: -log10 of the tail probability, which keeps ranking where the score
(1 - p) has saturated at 1.0. Rows written before it have NULL.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("surprise", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("surprise")
