"""Idempotent writes: runs, profiles and clusters, and a night's anomalies.

A night is written in one transaction that first deletes the rows this detector version
already holds for that night (and those clusters), then inserts the new ones (PostgreSQL:
COPY; SQLite: batched inserts) and the night's rows of the daily rollup: re-running a night
replaces its rows instead of duplicating them, and a crash mid-write rolls back to the
previous complete state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa

from tsmeta.store.schema import (
    DETECTOR_VERSION,
    TS,
    anomalies,
    anomaly_daily_counts,
    anomaly_feedback,
    clusters,
    events,
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

ANOMALY_COLUMNS = (
    "series_id", "ts", "value", "forecast", "lower", "upper", "residual", "score",
    "direction", "cluster_id", "model_version",
)  # fmt: skip
# NULL when a frame lacks them
OPTIONAL_ANOMALY_COLUMNS = ("severity", "basis", "surprise", "event_id")
_INSERT_BATCH = 20_000  # rows per executemany (SQLite)
_COPY_BATCH = 200_000  # rows per CSV chunk streamed into COPY (PostgreSQL)


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
    now = _now()
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
        _bulk_insert(conn, series_profile, prof, progress)
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
    now = _now()
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
        _bulk_insert(conn, stage, rows, progress)
        conn.execute(merge, {"now": _now()})
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
                series_id=series_id, ts=ts, label=label, note=note, author=author, created_at=_now()
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


def _bulk_insert(
    conn: sa.Connection, table: sa.Table, rows: pl.DataFrame,
    progress: Callable[[int], object] | None = None,
) -> None:  # fmt: skip
    """Bulk insert a frame whose columns are ``table``'s: COPY on PostgreSQL, the driver's
    batched executemany of plain tuples on SQLite (the store's two databases: its merges
    use their ON CONFLICT). Runs inside the caller's transaction; ``progress(n)`` after
    each batch of n rows."""
    if rows.height == 0:
        return
    if conn.dialect.name == "postgresql":
        cols = ", ".join(rows.columns)
        raw = conn.connection.driver_connection  # psycopg: same connection, same transaction
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table.name} ({cols}) FROM STDIN (FORMAT csv)") as copy,
        ):
            for first in range(0, rows.height, _COPY_BATCH):
                part = rows.slice(first, _COPY_BATCH)
                copy.write(part.write_csv(include_header=False))
                if progress is not None:
                    progress(part.height)
        return
    raw = conn.connection.driver_connection  # sqlite3: same connection, same transaction
    cols = rows.columns
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    cursor = raw.cursor()
    try:
        for first in range(0, rows.height, _INSERT_BATCH):
            part = _sqlite_values(rows.slice(first, _INSERT_BATCH))
            cursor.executemany(sql, part.iter_rows())
            if progress is not None:
                progress(part.height)
    finally:
        cursor.close()


# how SQLAlchemy's SQLite dialect stores DateTime and Date values (text; a zone's fields as
# they are): rows written by the driver directly read back exactly as its own would
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%6f"
_SQLITE_DATE = "%Y-%m-%d"


def _sqlite_values(part: pl.DataFrame) -> pl.DataFrame:
    """``part`` with its timestamps and dates as the text SQLAlchemy's SQLite dialect stores."""
    return part.with_columns(
        [pl.col(c).dt.strftime(_SQLITE_DATETIME) for c, t in part.schema.items()
         if isinstance(t, pl.Datetime)]
        + [pl.col(c).dt.strftime(_SQLITE_DATE) for c, t in part.schema.items() if t == pl.Date]
    )  # fmt: skip


def _insert_anomalies(
    conn: sa.Connection, rows: pl.DataFrame, progress: Callable[[int], object] | None = None
) -> None:
    """The night's anomaly rows (its own name: the fault tests inject failures here)."""
    _bulk_insert(conn, anomalies, rows, progress)


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
    clusters_written = sorted(cluster_ids) if cluster_ids is not None else in_frame
    shared = _event_rows(shared, night_start, night_end, clusters_written, run_id)
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
        pl.lit(_now()).dt.convert_time_zone("UTC").alias("written_at"),
    )
    night = night_start.date()
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
        for cid in clusters_written
    ]  # fmt: skip
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
        _bulk_insert(conn, events, shared)
    return rows.height


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
