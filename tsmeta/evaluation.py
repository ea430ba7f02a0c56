"""Detection quality against labelled anomalies (the generator's labels).

Point precision: share of flagged points that lie inside a labelled anomaly window.
Event recall: share of labelled anomalies overlapping the scored range that have at least
one flagged point inside them; also per anomaly kind.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

__all__ = ["detection_quality", "smape", "mase", "event_scores", "pr_auc"]


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


def smape(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """M4's sMAPE per series (0-200 scale): 200/h * sum |y - f| / (|y| + |f|); (n, h) -> (n,)."""
    num = np.abs(actual - forecast)
    den = np.abs(actual) + np.abs(forecast)
    ratio = np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)
    return 200.0 * ratio.mean(axis=1)


def mase(
    actual: np.ndarray, forecast: np.ndarray, insample: list[np.ndarray], m: int
) -> np.ndarray:
    """M4's MASE per series: MAE of the forecast over the in-sample seasonal-naive MAE (lag m)."""
    scale = np.array([np.mean(np.abs(s[m:] - s[:-m])) for s in insample])
    if (scale <= 0).any():
        raise ValueError("MASE is undefined for a series whose in-sample seasonal naive is exact")
    return np.abs(actual - forecast).mean(axis=1) / scale


def event_scores(flag: np.ndarray, event: np.ndarray, observed: np.ndarray | None = None) -> dict:
    """Event-level precision, recall and F1 of point flags on a dense grid.

    flag (n, T) bool; event (n, T) int: the labelled event each point belongs to, -1 for
    normal points. A detected run (consecutive flagged points of a series) is a true
    positive when any of its points lies in a labelled event; a labelled event is
    recalled when any of its points is flagged. ``observed`` (n, T) limits the events
    counted to those with at least one observed point (the others cannot be detected).
    """
    flag = np.asarray(flag, dtype=bool)
    event = np.asarray(event)
    prev = np.zeros_like(flag)
    prev[:, 1:] = flag[:, :-1]
    run = np.cumsum((flag & ~prev).ravel()).reshape(flag.shape) - 1  # run index at each point
    n_runs = int((flag & ~prev).sum())
    in_event = flag & (event >= 0)
    tp_runs = np.unique(run[in_event]).size if n_runs else 0
    ev_ids = event[event >= 0] if observed is None else event[(event >= 0) & observed]
    all_events = np.unique(ev_ids)
    hit = np.unique(event[in_event])
    recall = np.isin(all_events, hit).mean() if all_events.size else float("nan")
    precision = tp_runs / n_runs if n_runs else float("nan")
    f1 = (
        2 * precision * recall / (precision + recall)
        if n_runs and all_events.size and precision + recall > 0
        else 0.0
    )
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "detections": n_runs, "events": int(all_events.size)}  # fmt: skip


def pr_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Average precision of ``score`` ranking the points with ``label`` (NaN scores dropped).

    Ties are broken pessimistically (positives after negatives of the same score), so a
    detector that gives many points the same saturated score gains nothing from it.
    """
    s, y = np.asarray(score, dtype=np.float64).ravel(), np.asarray(label, dtype=bool).ravel()
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    if not y.any():
        return float("nan")
    order = np.lexsort((y, -s))  # by score descending, negatives first within a tie
    y = y[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    return float(precision[y].sum() / y.sum())
