"""Flagged points grouped as an analyst reads them: episodes within a series, shared events
across a cluster.

An **episode** is a run of consecutive flagged points of one series that deviate the same
way (at most one step apart): one anomaly with a start, an end, a peak and a direction, so
that a level shift of twenty hours is one row of a top list, not twenty.

A **shared event** is an hour (a step) in which a large share of a cluster's scored series
are flagged the same way (at least ``min_share`` of them and at least ``min_series``),
joined with the neighbouring such steps of the same cluster and direction: a holiday, an
upstream outage. On normal data a point is flagged with the configured false-alarm rate
(1e-3), so even 5% of a cluster in one step is far beyond chance. Its member points, the
cluster's points flagged in that direction inside it, are common-mode: the report lists the
event once and leaves its members out of the per-series list. A night on a date of the
holiday calendar (``Settings.holidays``) calls its events ``holiday`` (expected), any other
``shared``.

Pure polars over the night's flagged rows: no I/O (``tsmeta.jobs`` passes the rows and the
number of series scored per cluster; ``tsmeta.store`` writes the result).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import date, timedelta

import polars as pl

__all__ = ["episodes", "shared_events", "EVENT_COLUMNS", "EPISODE_COLUMNS"]

EVENT_COLUMNS = ("event_id", "cluster_id", "kind", "start_ts", "end_ts", "direction", "n_series",
                 "peak_share", "n_points")  # fmt: skip
EPISODE_COLUMNS = ("series_id", "cluster_id", "start", "end", "points", "direction", "peak_ts",
                   "value", "forecast", "score", "surprise", "severity", "event_id")  # fmt: skip
_SEVERITY_RANK = {"minor": 0, "major": 1, "critical": 2}


def _runs(frame: pl.DataFrame, keys: list[str], step: timedelta) -> pl.Expr:
    """A run number per row of ``frame`` sorted by keys and ts: a new run where a key
    changes or the time jumps by more than one step."""
    new = pl.col("ts").diff().over(keys).fill_null(step * 2) > step
    return new.cum_sum().alias("_run")


def episodes(rows: pl.DataFrame, step: timedelta) -> pl.DataFrame:
    """One row per episode of the anomaly ``rows`` (those of ``tsmeta.store.queries
    .query_anomalies``: series_id, ts, value, forecast, score, surprise, direction, severity,
    cluster_id, optionally event_id), highest peak first (score, then surprise).

    start is the first point's timestamp, end the step after the last; points counts the
    flagged points; the peak is the point of the highest score (ties: surprise) and lends the
    episode its value, forecast, score and surprise; severity is the worst of the episode;
    event_id the shared event its points belong to (None: its own)."""
    if "event_id" not in rows.columns:
        rows = rows.with_columns(pl.lit(None, pl.String).alias("event_id"))
    keys = ["series_id", "direction"]
    ranked = rows.with_columns(
        pl.col("surprise").fill_null(0.0).alias("_surprise"),
        pl.col("severity").replace_strict(_SEVERITY_RANK, default=0, return_dtype=pl.Int8).alias("_sev"),
    ).sort(*keys, "ts")  # fmt: skip
    ranked = ranked.with_columns(_runs(ranked, keys, step))
    out = (
        ranked.group_by("_run", maintain_order=True)
        .agg(
            pl.col("series_id").first(),
            pl.col("cluster_id").first(),
            pl.col("ts").min().alias("start"),
            (pl.col("ts").max() + step).alias("end"),
            pl.len().alias("points"),
            pl.col("direction").first(),
            pl.col("ts").sort_by("score", "_surprise", descending=True).first().alias("peak_ts"),
            pl.col("value").sort_by("score", "_surprise", descending=True).first(),
            pl.col("forecast").sort_by("score", "_surprise", descending=True).first(),
            pl.col("score").max(),
            pl.col("surprise").max(),
            pl.col("_sev").max(),
            pl.col("event_id").drop_nulls().first(),
        )
        .with_columns(
            pl.col("_sev")
            .replace_strict({v: k for k, v in _SEVERITY_RANK.items()}, return_dtype=pl.String)
            .alias("severity")  # fmt: skip
        )
        .sort(
            ["score", "surprise", "series_id", "start"],
            descending=[True, True, False, False],
            nulls_last=True,
        )  # fmt: skip
    )
    return out.select(EPISODE_COLUMNS)


def shared_events(
    rows: pl.DataFrame,
    scored: Mapping[str, int],
    step: timedelta,
    min_share: float,
    min_series: int,
    holidays: Collection[date] = (),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(events, rows with an ``event_id`` column) of one night's flagged ``rows``
    (series_id, ts, direction, cluster_id at least) given the number of series ``scored``
    per cluster that night.

    An event step: at least ``min_series`` series and ``min_share`` of the cluster's scored
    series flagged in the same direction. Consecutive event steps of a cluster and direction
    are one event (start_ts, end_ts = the step after the last, n_series: the distinct series
    flagged in it, peak_share: the largest share in one step, n_points: its member points).
    A row is a member when its cluster, direction and step fall in an event. The event id
    is ``cluster/start/direction`` (re-scoring a night gives the same ids)."""
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], received {min_share}")
    if min_series < 1:
        raise ValueError(f"min_series must be at least 1, received {min_series}")
    ts_type = rows.schema.get("ts", pl.Datetime("us", "UTC"))
    empty = pl.DataFrame(schema={"event_id": pl.String, "cluster_id": pl.String, "kind": pl.String,
                                 "start_ts": ts_type, "end_ts": ts_type, "direction": pl.String,
                                 "n_series": pl.UInt32, "peak_share": pl.Float64,
                                 "n_points": pl.UInt32})  # fmt: skip
    if rows.height == 0:
        return empty, rows if rows.width == 0 else rows.with_columns(
            pl.lit(None, pl.String).alias("event_id")
        )
    sizes = pl.DataFrame({"cluster_id": list(scored), "_scored": list(scored.values())},
                         schema={"cluster_id": pl.String, "_scored": pl.Int64})  # fmt: skip
    keys = ["cluster_id", "direction"]
    steps = (
        rows.group_by(*keys, "ts").agg(pl.col("series_id").n_unique().alias("_n"))
        .join(sizes, on="cluster_id", how="left")
        .filter((pl.col("_n") >= min_series)
                & (pl.col("_n") >= min_share * pl.col("_scored").fill_null(0).clip(lower_bound=1)))
        .sort(*keys, "ts")
    )  # fmt: skip
    if steps.height == 0:
        return empty, rows.with_columns(pl.lit(None, pl.String).alias("event_id"))
    steps = steps.with_columns(_runs(steps, keys, step))
    spans = steps.group_by("_run").agg(
        pl.col("cluster_id").first(), pl.col("direction").first(),
        pl.col("ts").min().alias("start_ts"), (pl.col("ts").max() + step).alias("end_ts"),
        (pl.col("_n") / pl.col("_scored")).max().alias("peak_share"),
    ).with_columns(
        pl.concat_str(pl.col("cluster_id"), pl.col("start_ts").dt.strftime("%Y-%m-%dT%H:%MZ"),
                      pl.col("direction"), separator="/").alias("event_id"),
    )  # fmt: skip
    member = steps.select(*keys, "ts", "_run").join(spans.select("_run", "event_id"), on="_run")
    tagged = rows.join(member.drop("_run"), on=[*keys, "ts"], how="left")
    holiday_dates = set(holidays)
    stats = tagged.filter(pl.col("event_id").is_not_null()).group_by("event_id").agg(
        pl.col("series_id").n_unique().alias("n_series"), pl.len().alias("n_points")
    )  # fmt: skip
    events = (
        spans.join(stats, on="event_id")
        .with_columns(
            pl.when(pl.col("start_ts").dt.date().is_in(list(holiday_dates)))
            .then(pl.lit("holiday"))
            .otherwise(pl.lit("shared"))
            .alias("kind")
        )
        .select(empty.columns)
        .sort("start_ts", "cluster_id", "direction")
    )
    return events.cast(empty.schema), tagged
