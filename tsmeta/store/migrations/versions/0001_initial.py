"""The foundation schema: runs, profiles, clusters, model registry, anomalies.

Frozen: it describes the schema as first shipped, whatever tsmeta/store/schema.py says now.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("flow", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("counts", sa.JSON),
        sa.Column("timings", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_table(
        "series_profile",
        sa.Column("series_id", sa.String(255), primary_key=True),
        sa.Column("period", sa.Integer, nullable=False),
        sa.Column("strength", sa.Float, nullable=False),
        sa.Column("cluster_id", sa.String(64), nullable=False),
        sa.Column("profiled_at", TS, nullable=False),
        sa.Column("run_id", sa.String(36)),
    )
    op.create_index("ix_series_profile_cluster_id", "series_profile", ["cluster_id"])
    op.create_table(
        "clusters",
        sa.Column("cluster_id", sa.String(64), primary_key=True),
        sa.Column("period", sa.Integer, nullable=False),
        sa.Column("n_series", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("run_id", sa.String(36)),
    )
    op.create_table(
        "models",
        sa.Column("cluster_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("algorithm", sa.String(32), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON),
        sa.Column("data_start", TS),
        sa.Column("data_end", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("run_id", sa.String(36)),
    )
    op.create_table(
        "anomalies",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("series_id", sa.String(255), nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("forecast", sa.Float, nullable=False),
        sa.Column("lower", sa.Float, nullable=False),
        sa.Column("upper", sa.Float, nullable=False),
        sa.Column("residual", sa.Float, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("direction", sa.String(4), nullable=False),
        sa.Column("cluster_id", sa.String(64), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("detector_version", sa.String(32), nullable=False),
        sa.UniqueConstraint("series_id", "ts", "detector_version", name="uq_anomaly_point"),
    )
    op.create_index("ix_anomalies_ts", "anomalies", ["ts"])
    op.create_index("ix_anomalies_cluster_ts", "anomalies", ["cluster_id", "ts"])


def downgrade() -> None:
    for table in ("anomalies", "models", "clusters", "series_profile", "runs"):
        op.drop_table(table)
