"""Cluster centroids (the persisted clustering) and when each cluster was created.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.add_column(sa.Column("centroid", sa.JSON))
        batch.add_column(sa.Column("max_cluster_size", sa.Integer))
        batch.add_column(sa.Column("created_at", TS))


def downgrade() -> None:
    with op.batch_alter_table("clusters") as batch:
        batch.drop_column("created_at")
        batch.drop_column("max_cluster_size")
        batch.drop_column("centroid")
