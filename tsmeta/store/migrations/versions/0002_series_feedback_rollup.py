"""Series attributes, analyst feedback, a daily rollup of anomaly counts, anomalies.written_at.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("series_id", sa.String(255), primary_key=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("first_seen", TS),
        sa.Column("last_seen", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "anomaly_daily_counts",
        sa.Column("night", sa.Date, primary_key=True),
        sa.Column("cluster_id", sa.String(64), primary_key=True),
        sa.Column("detector_version", sa.String(32), primary_key=True),
        sa.Column("n_anomalies", sa.Integer, nullable=False),
        sa.Column("n_series", sa.Integer, nullable=False),
        sa.Column("max_score", sa.Float),
        sa.Column("run_id", sa.String(36), nullable=False),
    )
    op.create_table(
        "anomaly_feedback",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("series_id", sa.String(255), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(
            "label in ('true_positive', 'false_positive')", name="ck_feedback_label"
        ),
    )
    op.create_index("ix_feedback_point", "anomaly_feedback", ["series_id", "ts"])
    # batch mode: SQLite rebuilds the table, PostgreSQL alters it in place
    with op.batch_alter_table("anomalies") as batch:
        batch.add_column(sa.Column("written_at", TS))
    # backfill the rollup from the rows already stored (kept in step by writes from now on)
    day = "date(ts)" if op.get_bind().dialect.name == "sqlite" else "(ts AT TIME ZONE 'UTC')::date"
    op.execute(
        f"""
        INSERT INTO anomaly_daily_counts (night, cluster_id, detector_version, n_anomalies, n_series, max_score, run_id)
        SELECT {day}, cluster_id, detector_version, count(*), count(DISTINCT series_id), max(score), max(run_id)
        FROM anomalies GROUP BY {day}, cluster_id, detector_version
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("anomalies") as batch:
        batch.drop_column("written_at")
    op.drop_table("anomaly_feedback")
    op.drop_table("anomaly_daily_counts")
    op.drop_table("series")
