"""Shared events: the ``events`` table and the anomalies' ``event_id`` (the event a flagged
point is a common-mode member of). Rows written before it have NULL: their own.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("event_id", sa.String(128)))
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("night", sa.Date, nullable=False),
        sa.Column("cluster_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("start_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("direction", sa.String(4), nullable=False),
        sa.Column("n_series", sa.Integer, nullable=False),
        sa.Column("peak_share", sa.Float, nullable=False),
        sa.Column("n_points", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("detector_version", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "detector_version", name="pk_events"),
    )
    op.create_index("ix_events_night", "events", ["night"])


def downgrade() -> None:
    op.drop_index("ix_events_night", table_name="events")
    op.drop_table("events")
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("event_id")
