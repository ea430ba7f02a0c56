"""A night's anomalies, its daily rollup and its shared events, replaced in one transaction.

The transaction first deletes the rows this detector version already holds for that night
(and those clusters), then inserts the new ones (PostgreSQL: COPY; SQLite: batched inserts)
and the night's rows of the daily rollup: re-running a night replaces its rows instead of
duplicating them, and a crash mid-write rolls back to the previous complete state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import polars as pl
import sqlalchemy as sa

from tsmeta.store.bulk import bulk_insert, now
from tsmeta.store.schema import DETECTOR_VERSION, anomalies, anomaly_daily_counts, events

__all__ = ["ANOMALY_COLUMNS", "OPTIONAL_ANOMALY_COLUMNS", "replace_night"]

ANOMALY_COLUMNS = (
    "series_id", "ts", "value", "forecast", "lower", "upper", "residual", "score",
    "direction", "cluster_id", "model_version",
)  # fmt: skip
# NULL when a frame lacks them
OPTIONAL_ANOMALY_COLUMNS = ("severity", "basis", "surprise", "alert", "event_id")


def _insert_anomalies(
    conn: sa.Connection, rows: pl.DataFrame, progress: Callable[[int], object] | None = None
) -> None:
    """The night's anomaly rows (its own name: the fault tests inject failures here)."""
    bulk_insert(conn, anomalies, rows, progress)


def replace_night(
    engine: sa.Engine,
    frame: pl.DataFrame,
    night_start: datetime,
    night_end: datetime,
    run_id: str,
    cluster_ids: list[str] | None = None,
    progress: Callable[[int], object] | None = None,
    shared: pl.DataFrame | None = None,
) -> int:
    """Replace this detector's anomalies in [night_start, night_end) with ``frame``.

    One transaction: delete the night's rows (of ``cluster_ids``, default all), insert the
    new ones (COPY on PostgreSQL), rewrite the night's rows of the daily rollup (a
    cluster scored with no anomaly gets a zero row) and its shared events (``shared``:
    ``tsmeta.events.shared_events``'s frame; None: none). A failure rolls all of it back.
    Returns rows inserted.
    """
    in_frame = _check_anomalies(frame, night_start, night_end, cluster_ids)
    clusters_written = sorted(cluster_ids) if cluster_ids is not None else in_frame
    shared = _event_rows(shared, night_start, night_end, clusters_written, run_id)
    rows = _anomaly_rows(frame, run_id)
    night = night_start.date()
    rollup = _rollup_rows(rows, night, clusters_written, run_id)
    cond = (
        (anomalies.c.ts >= night_start)
        & (anomalies.c.ts < night_end)
        & (anomalies.c.detector_version == DETECTOR_VERSION)
    )
    rollup_cond = (anomaly_daily_counts.c.night == night) & (
        anomaly_daily_counts.c.detector_version == DETECTOR_VERSION
    )
    events_cond = (events.c.night == night) & (events.c.detector_version == DETECTOR_VERSION)
    if cluster_ids is not None:
        cond = cond & anomalies.c.cluster_id.in_(cluster_ids)
        rollup_cond = rollup_cond & anomaly_daily_counts.c.cluster_id.in_(cluster_ids)
        events_cond = events_cond & events.c.cluster_id.in_(cluster_ids)
    with engine.begin() as conn:
        conn.execute(sa.delete(anomalies).where(cond))
        conn.execute(sa.delete(anomaly_daily_counts).where(rollup_cond))
        conn.execute(sa.delete(events).where(events_cond))
        _insert_anomalies(conn, rows, progress)
        if rollup:
            conn.execute(sa.insert(anomaly_daily_counts), rollup)
        bulk_insert(conn, events, shared)
    return rows.height


def _check_anomalies(
    frame: pl.DataFrame, night_start: datetime, night_end: datetime, cluster_ids: list[str] | None
) -> list[str]:
    """The clusters of a night's anomaly frame, once it is checked: its columns, one row per
    point, every point in the night, every cluster among those replaced."""
    missing = [c for c in ANOMALY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"anomaly frame lacks column(s) {missing}; expected {list(ANOMALY_COLUMNS)}"
        )
    if frame.height and not isinstance(frame.schema["ts"], pl.Datetime):
        raise ValueError(f"column 'ts' must be a datetime, received {frame.schema['ts']}")
    outside = frame.filter((pl.col("ts") < night_start) | (pl.col("ts") >= night_end))
    if outside.height:
        raise ValueError(
            f"{outside.height} anomaly rows fall outside the night [{night_start}, {night_end})"
        )
    dup = frame.filter(pl.struct("series_id", "ts").is_duplicated())
    if dup.height:
        raise ValueError(
            f"{dup.height} anomaly rows share a (series_id, ts), e.g. {dup.row(0)[:2]}: one row per point"
        )
    in_frame = sorted(frame.get_column("cluster_id").unique().to_list()) if frame.height else []
    if cluster_ids is not None:
        extra = sorted(set(in_frame) - set(cluster_ids))
        if extra:
            raise ValueError(
                f"anomaly rows of cluster(s) {extra} are not among the clusters replaced {cluster_ids}"
            )
    return in_frame


def _anomaly_rows(frame: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """The ``anomalies`` table's rows of a checked frame: UTC timestamps, the run, the
    detector version and the time written; optional columns absent are null."""
    optional = [
        pl.col(c) if c in frame.columns else pl.lit(None, pl.String).alias(c)
        for c in OPTIONAL_ANOMALY_COLUMNS
    ]
    rows = frame.select(*ANOMALY_COLUMNS, *optional).with_columns(
        pl.col("series_id").cast(pl.String),
        pl.col("ts").dt.convert_time_zone("UTC")
        if frame.schema["ts"].time_zone
        else pl.col("ts").dt.replace_time_zone("UTC"),
        pl.lit(run_id).alias("run_id"),
        pl.lit(DETECTOR_VERSION).alias("detector_version"),
        pl.lit(now()).dt.convert_time_zone("UTC").alias("written_at"),
    )
    return rows


def _rollup_rows(rows: pl.DataFrame, night: object, clusters: list[str], run_id: str) -> list[dict]:
    """The daily rollup's rows of a night: one per cluster written (zero anomalies too)."""
    counts = (
        rows.group_by("cluster_id")
        .agg(
            pl.len().alias("n_anomalies"),
            pl.col("series_id").n_unique().alias("n_series"),
            pl.col("score").max().alias("max_score"),
        )  # fmt: skip
        .to_dicts()
    )
    by_cluster = {c["cluster_id"]: c for c in counts}
    rollup = [
        {"night": night, "cluster_id": cid, "detector_version": DETECTOR_VERSION, "run_id": run_id,
         **{k: v for k, v in by_cluster.get(cid, {"n_anomalies": 0, "n_series": 0, "max_score": None}).items()
            if k != "cluster_id"}}
        for cid in clusters
    ]  # fmt: skip
    return rollup


def _event_rows(
    shared: pl.DataFrame | None, night_start: datetime, night_end: datetime,
    clusters: list[str], run_id: str,
) -> pl.DataFrame:  # fmt: skip
    """The ``events`` table's rows of a night's shared events, checked like its anomalies."""
    from tsmeta.events import EVENT_COLUMNS

    if shared is None or shared.height == 0:
        return pl.DataFrame()
    missing = [c for c in EVENT_COLUMNS if c not in shared.columns]
    if missing:
        raise ValueError(f"event frame lacks column(s) {missing}; expected {list(EVENT_COLUMNS)}")
    extra = sorted(set(shared.get_column("cluster_id").unique().to_list()) - set(clusters))
    if extra:
        raise ValueError(
            f"events of cluster(s) {extra} are not among the clusters replaced {clusters}"
        )
    rows = shared.select(EVENT_COLUMNS).with_columns(
        pl.col("start_ts", "end_ts").dt.convert_time_zone("UTC"),
        pl.lit(night_start.date()).alias("night"),
        pl.lit(run_id).alias("run_id"),
        pl.lit(DETECTOR_VERSION).alias("detector_version"),
    )
    outside = rows.filter((pl.col("start_ts") < night_start) | (pl.col("end_ts") > night_end))
    if outside.height:
        raise ValueError(
            f"{outside.height} events fall outside the night [{night_start}, {night_end})"
        )
    return rows
