"""Idempotent writes and their reads: runs, profiles and clusters, series, feedback.

A night's anomalies are ``tsmeta.store.night``'s (``replace_night``, re-exported here).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

import polars as pl
import sqlalchemy as sa

from tsmeta.store.bulk import INSERT_BATCH, bulk_insert
from tsmeta.store.bulk import now as now_utc
from tsmeta.store.night import ANOMALY_COLUMNS, replace_night
from tsmeta.store.schema import (
    TS,
    anomaly_feedback,
    clusters,
    runs,
    series,
    series_profile,
)

__all__ = [
    "ANOMALY_COLUMNS",
    "start_run",
    "finish_run",
    "write_profile",
    "replace_night",
    "read_profile",
    "read_clusters",
    "completed_nights",
    "upsert_series",
    "record_feedback",
    "FEEDBACK_LABELS",
]

FEEDBACK_LABELS = ("true_positive", "false_positive")


def start_run(engine: sa.Engine, flow: str, parameters: dict, run_id: str | None = None) -> str:
    """Record a run as 'running'; returns its id (a given id is reused, e.g. a retry)."""
    run_id = run_id or str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(sa.delete(runs).where(runs.c.run_id == run_id))
        conn.execute(
            sa.insert(runs).values(
                run_id=run_id,
                flow=flow,
                status="running",
                parameters=parameters,
                started_at=now_utc(),
            )
        )
    return run_id


def finish_run(
    engine: sa.Engine, run_id: str, status: str, counts: dict | None = None,
    timings: dict | None = None, error: str | None = None,
) -> None:  # fmt: skip
    if status not in ("completed", "partial", "failed"):
        raise ValueError(f"run status {status!r} is not one of completed, partial, failed")
    with engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.run_id == run_id)
            .values(
                status=status, finished_at=now_utc(), counts=counts, timings=timings, error=error
            )
        )


def _batches(rows: list[dict], size: int = INSERT_BATCH) -> Iterable[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def write_profile(
    engine: sa.Engine,
    profile: pl.DataFrame,
    run_id: str,
    centroids: list[dict] | None = None,
    max_cluster_size: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> None:
    """Replace the profile and cluster tables with a new profiling (one transaction).

    profile: series_id, period, strength, cluster_id. ``centroids`` (``ClusterSet.rows()``)
    are stored with the clusters; a cluster that already existed keeps its ``created_at``.
    """
    now = now_utc()
    prof = profile.select(
        pl.col("series_id").cast(pl.String), "period", "strength", "cluster_id"
    ).with_columns(pl.lit(now).alias("profiled_at"), pl.lit(run_id).alias("run_id"))
    summary = profile.group_by("cluster_id").agg(
        pl.col("period").first(), pl.len().alias("n_series")
    )
    shapes = {r["cluster_id"]: r for r in centroids or []}
    with engine.begin() as conn:
        created = dict(conn.execute(sa.select(clusters.c.cluster_id, clusters.c.created_at)).all())
        rows = []
        for r in summary.sort("cluster_id").iter_rows(named=True):
            cid = r["cluster_id"]
            rows.append({
                **r, "updated_at": now, "run_id": run_id,
                "centroid": shapes.get(cid, {}).get("centroid"),
                "max_cluster_size": max_cluster_size, "created_at": created.get(cid) or now,
            })  # fmt: skip
        conn.execute(sa.delete(series_profile))
        conn.execute(sa.delete(clusters))
        bulk_insert(conn, series_profile, prof, progress)
        if rows:
            conn.execute(sa.insert(clusters), rows)


def read_clusters(engine: sa.Engine) -> list[dict]:
    """The stored clusters: cluster_id, period, n_series, centroid (None on old profiles)."""
    query = sa.select(
        clusters.c.cluster_id, clusters.c.period, clusters.c.n_series, clusters.c.centroid
    ).order_by(clusters.c.cluster_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def upsert_series(
    engine: sa.Engine, frame: pl.DataFrame, progress: Callable[[int], object] | None = None
) -> int:
    """Insert or update series rows: series_id and any of attributes, first_seen, last_seen.

    Existing attributes are replaced only when the frame carries an ``attributes`` column;
    first_seen keeps the earliest and last_seen the latest value seen.
    """
    if "series_id" not in frame.columns:
        raise ValueError("series frame needs a 'series_id' column")
    cols = [c for c in ("attributes", "first_seen", "last_seen") if c in frame.columns]
    if cols == ["first_seen", "last_seen"]:
        return _upsert_seen(engine, frame, progress)
    rows = (
        frame.select("series_id", *cols)
        .with_columns(pl.col("series_id").cast(pl.String))
        .to_dicts()
    )
    now = now_utc()
    for r in rows:
        r["updated_at"] = now
        r.setdefault("attributes", {})
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(series)
    update = {"updated_at": stmt.excluded.updated_at}
    if "attributes" in cols:
        update["attributes"] = stmt.excluded.attributes
    # SQLite's two-argument min/max are PostgreSQL's least/greatest
    least, greatest = (
        (sa.func.min, sa.func.max)
        if engine.dialect.name == "sqlite"
        else (sa.func.least, sa.func.greatest)
    )
    if "first_seen" in cols:
        update["first_seen"] = sa.func.coalesce(
            least(series.c.first_seen, stmt.excluded.first_seen), stmt.excluded.first_seen
        )
    if "last_seen" in cols:
        update["last_seen"] = sa.func.coalesce(
            greatest(series.c.last_seen, stmt.excluded.last_seen), stmt.excluded.last_seen
        )
    stmt = stmt.on_conflict_do_update(index_elements=["series_id"], set_=update)
    with engine.begin() as conn:
        for batch in _batches(rows):
            conn.execute(stmt, batch)
            if progress is not None:
                progress(len(batch))
    return len(rows)


def _upsert_seen(
    engine: sa.Engine, frame: pl.DataFrame, progress: Callable[[int], object] | None = None
) -> int:
    """upsert_series for (series_id, first_seen, last_seen) in bulk: the rows go into a
    temporary staging table (COPY on PostgreSQL) and one INSERT ... SELECT ... ON CONFLICT
    merges them, so two million series cost one statement, not two million."""
    stage = sa.Table(
        "_series_seen_stage", sa.MetaData(),
        sa.Column("series_id", sa.String(255)), sa.Column("first_seen", TS),
        sa.Column("last_seen", TS), prefixes=["TEMPORARY"],
    )  # fmt: skip
    rows = frame.select(pl.col("series_id").cast(pl.String), "first_seen", "last_seen")
    pg = engine.dialect.name == "postgresql"
    least, greatest = ("least", "greatest") if pg else ("min", "max")
    empty = "'{}'::json" if pg else "'{}'"
    merge = sa.text(
        f"""
        INSERT INTO series (series_id, attributes, first_seen, last_seen, updated_at)
        SELECT series_id, {empty}, first_seen, last_seen, :now FROM _series_seen_stage WHERE true
        ON CONFLICT (series_id) DO UPDATE SET
            first_seen = coalesce({least}(series.first_seen, excluded.first_seen), excluded.first_seen),
            last_seen = coalesce({greatest}(series.last_seen, excluded.last_seen), excluded.last_seen),
            updated_at = excluded.updated_at
        """  # noqa: E501
    ).bindparams(sa.bindparam("now", type_=TS))
    with engine.begin() as conn:
        stage.drop(conn, checkfirst=True)
        stage.create(conn)
        bulk_insert(conn, stage, rows, progress)
        conn.execute(merge, {"now": now_utc()})
        stage.drop(conn)
    return rows.height


def record_feedback(
    engine: sa.Engine,
    series_id: str,
    ts: datetime,
    label: str,
    author: str,
    note: str | None = None,
) -> None:
    """An analyst's verdict on a flagged point (kept across re-runs of the night)."""
    if label not in FEEDBACK_LABELS:
        raise ValueError(f"feedback label {label!r} is not one of {FEEDBACK_LABELS}")
    if not author:
        raise ValueError("feedback needs an author")
    with engine.begin() as conn:
        conn.execute(
            sa.insert(anomaly_feedback).values(
                series_id=series_id,
                ts=ts,
                label=label,
                note=note,
                author=author,
                created_at=now_utc(),
            )
        )


def completed_nights(engine: sa.Engine) -> set[str]:
    """ISO dates of the nights whose latest nightly run completed (what a backfill skips)."""
    query = (
        sa.select(runs.c.parameters, runs.c.status)
        .where(runs.c.flow == "nightly")
        .order_by(runs.c.started_at)
    )
    latest: dict[str, str] = {}
    with engine.connect() as conn:
        for params, status in conn.execute(query):
            night = (params or {}).get("night")
            if night:
                latest[night] = status
    return {night for night, status in latest.items() if status in ("completed", "partial")}


PROFILE_COLUMNS = ("series_id", "period", "strength", "cluster_id")
_POLARS_TYPE = {str: pl.String, int: pl.Int64, float: pl.Float64}  # by the column's Python type


def read_profile(engine: sa.Engine, columns: tuple[str, ...] = PROFILE_COLUMNS) -> pl.DataFrame:
    """``PROFILE_COLUMNS`` of the current profiling (or only ``columns`` of them: fewer
    columns read faster, one Python row per series)."""
    unknown = set(columns) - set(PROFILE_COLUMNS)
    if unknown:
        raise ValueError(f"read_profile: unknown columns {sorted(unknown)}")
    query = sa.select(*(series_profile.c[n] for n in columns))
    with engine.connect() as conn:  # the driver's own rows: no per-row result processing
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(str(query.compile(dialect=conn.dialect)))
            rows = cursor.fetchall()
        finally:
            cursor.close()
    schema = {n: _POLARS_TYPE[series_profile.c[n].type.python_type] for n in columns}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    if frame.height == 0:
        raise LookupError("no series profile in the database: run `tsmeta profile` first")
    return frame
