"""Detection quality against labelled anomalies (the generator's labels).

Point precision: share of flagged points that lie inside a labelled anomaly window.
Event recall: share of labelled anomalies overlapping the scored range that have at least
one flagged point inside them; also per anomaly kind.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

__all__ = ["detection_quality"]


def detection_quality(
    flags: pl.DataFrame, labels: pl.DataFrame, start: datetime, end: datetime
) -> dict:
    """flags: series_id, ts (flagged points in [start, end)); labels: series_id, kind, start, end."""
    if flags.schema["series_id"] != labels.schema["series_id"]:
        labels = labels.with_columns(pl.col("series_id").cast(flags.schema["series_id"]))
    events = labels.filter((pl.col("start") < end) & (pl.col("end") > start)).with_row_index(
        "event"
    )
    hits = (
        flags.select("series_id", "ts")
        .join(
            events.select("event", "series_id", "kind", "start", "end"), on="series_id", how="inner"
        )
        .filter((pl.col("ts") >= pl.col("start")) & (pl.col("ts") < pl.col("end")))
    )
    n_flags = flags.height
    true_flags = hits.select(pl.struct("series_id", "ts").n_unique()).item() if hits.height else 0
    detected = hits.get_column("event").unique()
    per_kind = (
        events.with_columns(pl.col("event").is_in(detected.implode()).alias("hit"))
        .group_by("kind")
        .agg(pl.len().alias("events"), pl.col("hit").sum().alias("detected"))
        .with_columns((pl.col("detected") / pl.col("events")).alias("recall"))
        .sort("kind")
    )
    n_events = events.height
    return {
        "flagged_points": n_flags,
        "true_flagged_points": true_flags,
        "precision": true_flags / n_flags if n_flags else float("nan"),
        "events": n_events,
        "events_detected": len(detected),
        "recall": len(detected) / n_events if n_events else float("nan"),
        "per_kind": per_kind.to_dicts(),
    }
