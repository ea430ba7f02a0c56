"""Idempotent writes: runs, profiles and clusters, and a night's anomalies.

A night is written in one transaction that first deletes the rows this detector version
already holds for that night (and those clusters), then inserts the new ones: re-running a
night replaces its rows instead of duplicating them, and a crash mid-write rolls back to
the previous complete state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa

from tsmeta.store.schema import DETECTOR_VERSION, anomalies, clusters, runs, series_profile

__all__ = [
    "ANOMALY_COLUMNS",
    "start_run",
    "finish_run",
    "write_profile",
    "replace_night",
    "read_profile",
]

ANOMALY_COLUMNS = (
    "series_id", "ts", "value", "forecast", "lower", "upper", "residual", "score",
    "direction", "cluster_id", "model_version",
)  # fmt: skip
_INSERT_BATCH = 20_000


def _now() -> datetime:
    return datetime.now(UTC)


def start_run(engine: sa.Engine, flow: str, parameters: dict, run_id: str | None = None) -> str:
    """Record a run as 'running'; returns its id (a given id is reused, e.g. a retry)."""
    run_id = run_id or str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(sa.delete(runs).where(runs.c.run_id == run_id))
        conn.execute(
            sa.insert(runs).values(
                run_id=run_id, flow=flow, status="running", parameters=parameters, started_at=_now()
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
            .values(status=status, finished_at=_now(), counts=counts, timings=timings, error=error)
        )


def _batches(rows: list[dict], size: int = _INSERT_BATCH) -> Iterable[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def write_profile(engine: sa.Engine, profile: pl.DataFrame, run_id: str) -> None:
    """Replace the profile and cluster tables with a new profiling (one transaction).

    profile: series_id, period, strength, cluster_id.
    """
    now = _now()
    prof = profile.select(
        pl.col("series_id").cast(pl.String), "period", "strength", "cluster_id"
    ).with_columns(pl.lit(now).alias("profiled_at"), pl.lit(run_id).alias("run_id"))
    summary = (
        profile.group_by("cluster_id")
        .agg(pl.col("period").first(), pl.len().alias("n_series"))
        .with_columns(pl.lit(now).alias("updated_at"), pl.lit(run_id).alias("run_id"))
    )
    with engine.begin() as conn:
        conn.execute(sa.delete(series_profile))
        conn.execute(sa.delete(clusters))
        for rows in _batches(prof.to_dicts()):
            conn.execute(sa.insert(series_profile), rows)
        conn.execute(sa.insert(clusters), summary.to_dicts())


def read_profile(engine: sa.Engine) -> pl.DataFrame:
    """series_id, period, strength, cluster_id of the current profiling."""
    query = sa.select(
        series_profile.c.series_id, series_profile.c.period,
        series_profile.c.strength, series_profile.c.cluster_id,
    )  # fmt: skip
    with engine.connect() as conn:
        frame = pl.read_database(query, connection=conn, schema_overrides={"series_id": pl.String})
    if frame.height == 0:
        raise LookupError("no series profile in the database: run `tsmeta profile` first")
    return frame


def replace_night(
    engine: sa.Engine,
    frame: pl.DataFrame,
    night_start: datetime,
    night_end: datetime,
    run_id: str,
    cluster_ids: list[str] | None = None,
) -> int:
    """Replace this detector's anomalies in [night_start, night_end) with ``frame``.

    ``cluster_ids`` limits the replacement to those clusters (default: the whole night).
    Returns rows inserted.
    """
    missing = [c for c in ANOMALY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"anomaly frame lacks column(s) {missing}; expected {list(ANOMALY_COLUMNS)}"
        )
    outside = frame.filter((pl.col("ts") < night_start) | (pl.col("ts") >= night_end))
    if outside.height:
        raise ValueError(
            f"{outside.height} anomaly rows fall outside the night [{night_start}, {night_end})"
        )
    rows = (
        frame.select(ANOMALY_COLUMNS)
        .with_columns(
            pl.col("series_id").cast(pl.String),
            pl.lit(run_id).alias("run_id"),
            pl.lit(DETECTOR_VERSION).alias("detector_version"),
        )
        .to_dicts()
    )
    cond = (
        (anomalies.c.ts >= night_start)
        & (anomalies.c.ts < night_end)
        & (anomalies.c.detector_version == DETECTOR_VERSION)
    )
    if cluster_ids is not None:
        cond = cond & anomalies.c.cluster_id.in_(cluster_ids)
    with engine.begin() as conn:
        conn.execute(sa.delete(anomalies).where(cond))
        for batch in _batches(rows):
            conn.execute(sa.insert(anomalies), batch)
    return len(rows)
