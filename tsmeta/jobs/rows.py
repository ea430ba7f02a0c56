"""A scored night as rows: the anomaly table's columns, one row per flagged point."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

from tsmeta.data.panel import freq_timedelta
from tsmeta.detect import BASIS, SEVERITY, severity_of, surprise_of

# the rows' columns and types (``points_frame``; ``flag`` only with every point)
ROW_SCHEMA = {
    "series_id": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64,
    "forecast": pl.Float64, "lower": pl.Float64, "upper": pl.Float64, "residual": pl.Float64,
    "score": pl.Float64, "surprise": pl.Float64, "alert": pl.Boolean, "direction": pl.String,
    "severity": pl.String, "basis": pl.String, "cluster_id": pl.String, "model_version": pl.Int64,
}  # fmt: skip


def no_points(every_point: bool = False) -> pl.DataFrame:
    """A night without rows (every cluster failed, or none was scored), with the columns
    ``points_frame`` gives: what is written and read after it needs no special case."""
    return pl.DataFrame(schema=ROW_SCHEMA | ({"flag": pl.Boolean} if every_point else {}))


def points_frame(
    day, night_start: datetime, freq: str, cluster_id: str, version: int,
    false_alarm_rate: float, every_point: bool = False,
) -> pl.DataFrame:  # noqa: ANN001  # fmt: skip
    """The flagged points of a scored chunk as anomaly rows (every scored point, with a
    ``flag`` column, when ``every_point``)."""
    if every_point:
        rows, hours = np.nonzero(day.observed & day.scored[:, None])
    else:
        rows, hours = day.flagged_rows()
    step_us = int(freq_timedelta(freq) / timedelta(microseconds=1))
    ts = np.datetime64(night_start.replace(tzinfo=None), "us") + hours * np.timedelta64(
        step_us, "us"
    )
    resid = day.residual[rows, hours]
    frame = pl.DataFrame(
        {
            "series_id": day.series_ids[rows].astype(str),
            "ts": ts,
            "value": day.value[rows, hours].astype(np.float64),
            "forecast": day.forecast[rows, hours].astype(np.float64),
            "lower": day.lower[rows, hours].astype(np.float64),
            "upper": day.upper[rows, hours].astype(np.float64),
            "residual": resid.astype(np.float64),
            "score": day.score[rows, hours].astype(np.float64),
            "surprise": surprise_of(day.tail[rows, hours]),
            "alert": None if day.alert is None else day.alert[rows, hours],
            "direction": np.where(resid > 0, "up", "down"),
            "severity": np.asarray(SEVERITY)[severity_of(day.tail[rows, hours], false_alarm_rate)],
            "basis": np.asarray(BASIS)[day.basis[rows]],
            "cluster_id": np.full(len(rows), cluster_id),
            "model_version": np.full(len(rows), version, dtype=np.int64),
        },
        # the types of ROW_SCHEMA (ts: naive microseconds, then placed in UTC)
        schema_overrides={c: t for c, t in ROW_SCHEMA.items() if c != "ts"},
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    if every_point:
        frame = frame.with_columns(pl.Series("flag", day.flag[rows, hours])).with_columns(
            pl.when(pl.col("flag")).then(pl.col("severity")).alias("severity")  # flags only
        )
    return frame
