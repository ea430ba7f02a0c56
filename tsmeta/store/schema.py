"""SQLAlchemy tables of the anomaly store (SQLite by default, PostgreSQL in production).

All timestamps are UTC. ``anomalies`` holds at most one row per series, timestamp and
detector version: re-running a night replaces that night's rows (see ``writes``).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "metadata",
    "series",
    "anomaly_feedback",
    "anomaly_daily_counts",
    "runs",
    "series_profile",
    "clusters",
    "models",
    "anomalies",
    "events",
    "DETECTOR_VERSION",
    "create_engine",
    "create_schema",
]

# the generation of the scoring rules that flagged a row (any meta-learner: the model that
# forecast it is ``anomalies.model_version`` in the ``models`` registry, with its algorithm)
DETECTOR_VERSION = "tsmeta-1"

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)  # every timestamp is stored with its (UTC) zone


def _id_column() -> sa.Column:
    """Surrogate key: BIGSERIAL on PostgreSQL, SQLite's INTEGER rowid alias."""
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("flow", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running, completed, partial, failed
    sa.Column("parameters", sa.JSON, nullable=False, default=dict),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("finished_at", TS),
    sa.Column("counts", sa.JSON),
    sa.Column("timings", sa.JSON),
    sa.Column("error", sa.Text),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("series_id", sa.String(255), primary_key=True),
    sa.Column("attributes", sa.JSON, nullable=False, default=dict),  # free-form tags for analysts
    sa.Column("first_seen", TS),
    sa.Column("last_seen", TS),
    sa.Column("updated_at", TS, nullable=False),
)

series_profile = sa.Table(
    "series_profile",
    metadata,
    sa.Column("series_id", sa.String(255), primary_key=True),
    sa.Column("period", sa.Integer, nullable=False),  # 0 = aperiodic
    sa.Column("strength", sa.Float, nullable=False),
    sa.Column("cluster_id", sa.String(64), nullable=False, index=True),
    sa.Column("profiled_at", TS, nullable=False),
    sa.Column("run_id", sa.String(36)),
)

clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("cluster_id", sa.String(64), primary_key=True),
    sa.Column("period", sa.Integer, nullable=False),
    sa.Column("n_series", sa.Integer, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("run_id", sa.String(36)),
    # the persisted clustering: z-normalised seasonal shape (one value per phase); a later
    # profiling assigns series to the nearest centroid of their period (see clustering.py)
    sa.Column("centroid", sa.JSON),
    sa.Column("max_cluster_size", sa.Integer),  # the cap the cluster was fitted under
    sa.Column("created_at", TS),
)

models = sa.Table(
    "models",
    metadata,
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

anomalies = sa.Table(
    "anomalies",
    metadata,
    _id_column(),
    sa.Column("series_id", sa.String(255), nullable=False),
    sa.Column("ts", TS, nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("forecast", sa.Float, nullable=False),
    sa.Column("lower", sa.Float, nullable=False),
    sa.Column("upper", sa.Float, nullable=False),
    sa.Column("residual", sa.Float, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("direction", sa.String(4), nullable=False),  # up / down
    sa.Column("severity", sa.String(8)),  # minor / major / critical (tail p < a, a/10, a/100)
    sa.Column("basis", sa.String(8)),  # how the forecast was made: adapted / partial / fallback
    # -log10 of the tail probability (3: one in a thousand on a normal night; capped at 300):
    # it keeps ranking where the score has saturated at 1.0
    sa.Column("surprise", sa.Float),
    # the first point of a run of anomalies (more surprising than any point of its series
    # since the start of the night before); NULL: written without the residual history
    sa.Column("alert", sa.Boolean),
    sa.Column("cluster_id", sa.String(64), nullable=False),
    # the shared event (``events``) the point is a common-mode member of; NULL: its own
    sa.Column("event_id", sa.String(128)),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("detector_version", sa.String(32), nullable=False),
    sa.Column("written_at", TS),
    sa.UniqueConstraint("series_id", "ts", "detector_version", name="uq_anomaly_point"),
    sa.Index("ix_anomalies_ts", "ts"),
    sa.Index("ix_anomalies_cluster_ts", "cluster_id", "ts"),
)

# Shared events (``tsmeta.events``): steps in which a large share of a cluster's series were
# flagged the same way, joined into spans; written and replaced with the night's anomalies,
# whose member rows carry the event_id.
events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.String(128), nullable=False),
    sa.Column("night", sa.Date, nullable=False),
    sa.Column("cluster_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # shared / holiday (on the calendar)
    sa.Column("start_ts", TS, nullable=False),
    sa.Column("end_ts", TS, nullable=False),  # the step after the last
    sa.Column("direction", sa.String(4), nullable=False),  # up / down
    sa.Column("n_series", sa.Integer, nullable=False),  # distinct series flagged in it
    sa.Column("peak_share", sa.Float, nullable=False),  # largest share of the cluster in one step
    sa.Column("n_points", sa.Integer, nullable=False),  # member anomalies
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("detector_version", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("event_id", "detector_version", name="pk_events"),
    sa.Index("ix_events_night", "night"),
)

# Write-time rollup: one row per night, cluster and detector, maintained in the same
# transaction as the night's anomalies, so per-day counts never scan the anomalies.
anomaly_daily_counts = sa.Table(
    "anomaly_daily_counts",
    metadata,
    sa.Column("night", sa.Date, primary_key=True),
    sa.Column("cluster_id", sa.String(64), primary_key=True),
    sa.Column("detector_version", sa.String(32), primary_key=True),
    sa.Column("n_anomalies", sa.Integer, nullable=False),
    sa.Column("n_series", sa.Integer, nullable=False),
    sa.Column("max_score", sa.Float),
    sa.Column("run_id", sa.String(36), nullable=False),
)

# Analysts' verdicts. Keyed by the point (series, ts), not by the anomaly row, so a verdict
# survives re-runs that replace the night's rows.
anomaly_feedback = sa.Table(
    "anomaly_feedback",
    metadata,
    _id_column(),
    sa.Column("series_id", sa.String(255), nullable=False),
    sa.Column("ts", TS, nullable=False),
    sa.Column("label", sa.String(16), nullable=False),  # true_positive / false_positive
    sa.Column("note", sa.Text),
    sa.Column("author", sa.String(128), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.CheckConstraint("label in ('true_positive', 'false_positive')", name="ck_feedback_label"),
    sa.Index("ix_feedback_point", "series_id", "ts"),
)


def create_engine(url: str) -> sa.Engine:
    """Engine for a database URL; SQLite files get their folder created and WAL mode;
    PostgreSQL URLs without a driver use psycopg 3 (``normalise_database_url``)."""
    from tsmeta.database_url import normalise_database_url

    url = normalise_database_url(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def create_schema(engine: sa.Engine) -> None:
    """Bring the database to the current schema with the Alembic migrations (idempotent).

    Costs one query when the database is already at the head revision.
    """
    from tsmeta.store.migrate import current_revision, head_revision, upgrade

    if current_revision(engine) != head_revision():
        upgrade(engine)
