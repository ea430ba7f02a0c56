"""Reading anomalies back: filters become bound parameters, never SQL text."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import sqlalchemy as sa

from tsmeta.store.schema import anomalies, anomaly_daily_counts, events, series, series_profile

__all__ = ["query_anomalies", "query_events", "latest_night", "ANOMALY_OUTPUT_COLUMNS"]

ANOMALY_OUTPUT_COLUMNS = (
    "series_id", "ts", "value", "forecast", "lower", "upper", "residual", "score", "surprise",
    "alert", "direction", "severity", "basis", "cluster_id", "event_id", "model_version", "run_id",
)  # fmt: skip
EVENT_OUTPUT_COLUMNS = ("night", "kind", "cluster_id", "start_ts", "end_ts", "direction", "n_series",
                        "peak_share", "n_points", "event_id")  # fmt: skip


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def latest_night(engine: sa.Engine) -> date | None:
    """The newest night with stored results (from the daily rollup)."""
    with engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.max(anomaly_daily_counts.c.night))).scalar()
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def query_anomalies(
    engine: sa.Engine,
    start: date | None = None,
    end: date | None = None,
    series_ids: list[str] | None = None,
    clusters: list[str] | None = None,
    min_score: float | None = None,
    top: int | None = None,
) -> pl.DataFrame:
    """Anomalies of the nights ``start..end`` (inclusive; default: the latest night),
    optionally only some series or clusters and a minimum score; highest score first (ties
    at a saturated score broken by the larger surprise, -log10 of the tail probability).
    """
    if start is None and end is None:
        start = end = latest_night(engine)
        if start is None:
            return pl.DataFrame(schema={c: pl.Null for c in ANOMALY_OUTPUT_COLUMNS})
    start = start or end
    end = end or start
    if end < start:
        raise ValueError(f"empty date range: end {end} is before start {start}")
    if min_score is not None and not 0 <= min_score <= 1:
        raise ValueError(f"min_score is a score in [0, 1], received {min_score}")
    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1, received {top}")
    if series_ids:
        _check_known_series(engine, series_ids)
    query = (
        sa.select(*(anomalies.c[c] for c in ANOMALY_OUTPUT_COLUMNS))
        .where(
            anomalies.c.ts >= _day_start(start),
            anomalies.c.ts < _day_start(end + timedelta(days=1)),
        )
        .order_by(
            anomalies.c.score.desc(),
            sa.nulls_last(anomalies.c.surprise.desc()),
            anomalies.c.series_id,
            anomalies.c.ts,
        )  # fmt: skip
    )
    if series_ids:
        query = query.where(anomalies.c.series_id.in_(series_ids))
    if clusters:
        query = query.where(anomalies.c.cluster_id.in_(clusters))
    if min_score is not None:
        query = query.where(anomalies.c.score >= min_score)
    if top is not None:
        query = query.limit(top)
    with engine.connect() as conn:
        frame = pl.read_database(query, connection=conn, schema_overrides={"series_id": pl.String})
    if frame.height and isinstance(frame.schema["ts"], pl.Datetime):
        tz = frame.schema["ts"].time_zone
        ts = (
            pl.col("ts").dt.replace_time_zone("UTC")
            if tz is None
            else pl.col("ts").dt.convert_time_zone("UTC")
        )
        frame = frame.with_columns(ts)
    return frame


def query_events(
    engine: sa.Engine, start: date | None = None, end: date | None = None,
    clusters: list[str] | None = None,
) -> pl.DataFrame:  # fmt: skip
    """Shared events of the nights ``start..end`` (inclusive; default: the latest night),
    optionally of some clusters only; most member points first."""
    if start is None and end is None:
        start = end = latest_night(engine)
        if start is None:
            return pl.DataFrame(schema=dict.fromkeys(EVENT_OUTPUT_COLUMNS, pl.Null))
    start, end = start or end, end or start
    query = (
        sa.select(*(events.c[c] for c in EVENT_OUTPUT_COLUMNS))
        .where(events.c.night >= start, events.c.night <= end)
        .order_by(events.c.n_points.desc(), events.c.start_ts, events.c.cluster_id)
    )
    if clusters:
        query = query.where(events.c.cluster_id.in_(clusters))
    with engine.connect() as conn:
        frame = pl.read_database(query, connection=conn)
    if frame.height:
        frame = frame.with_columns(
            (pl.col(c).dt.replace_time_zone("UTC") if frame.schema[c].time_zone is None  # type: ignore[union-attr]
             else pl.col(c).dt.convert_time_zone("UTC"))
            for c in ("start_ts", "end_ts") if isinstance(frame.schema[c], pl.Datetime)
        )  # fmt: skip
    return frame


def _check_known_series(engine: sa.Engine, series_ids: list[str]) -> None:
    wanted = set(series_ids)
    with engine.connect() as conn:
        known = set(
            conn.execute(
                sa.select(series.c.series_id).where(series.c.series_id.in_(wanted))
            ).scalars()
        )
        known |= set(
            conn.execute(
                sa.select(series_profile.c.series_id).where(series_profile.c.series_id.in_(wanted))
            ).scalars()
        )
    unknown = sorted(wanted - known)
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:5])
        raise LookupError(
            f"unknown series id(s) {shown}: not in the profile; check the id or run `tsmeta profile`"
        )
