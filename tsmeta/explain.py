"""A night's scoring of a few named series, with their recent history: what ``tsmeta plot``
and ``tsmeta report`` draw.

The forecast band is recomputed with the cluster's current model (adaptation is
deterministic, so it matches the stored night when the model has not changed since);
the flagged points are the stored anomalies of that night when the night has been run,
else the recomputed flags (``SeriesNight.flags_from`` says which). Only the named series
are read from the dataset (a filtered scan), so this is cheap at millions of series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl

from tsmeta.clustering import period_of_cluster
from tsmeta.config import Settings
from tsmeta.data.io import dataset_dates, scan_dataset
from tsmeta.data.panel import Panel, freq_timedelta, scatter_panel
from tsmeta.detect import BASIS, score_day
from tsmeta.jobs import engine_for, night_bounds, points_frame
from tsmeta.jobs.history import NightHistory, warmup_nights
from tsmeta.meta.tasks import window_reach
from tsmeta.store.models import load_latest_models
from tsmeta.store.queries import query_anomalies
from tsmeta.store.writes import read_profile

__all__ = ["SeriesNight", "series_night", "latest_nightly_run"]


@dataclass
class SeriesNight:
    series_id: str
    cluster_id: str
    model_version: int
    night: date
    ts: np.ndarray  # (T,) datetime64[us], UTC: the history and the night
    value: np.ndarray  # (T,) float, NaN where unobserved
    night_ts: np.ndarray  # (H,) the night's timestamps
    forecast: np.ndarray  # (H,)
    lower: np.ndarray
    upper: np.ndarray
    score: np.ndarray  # (H,) 1 - tail probability (NaN: not scored)
    basis: str
    flags: pl.DataFrame  # ts, value, forecast, score, direction, severity of flagged points
    flags_from: str  # "stored" (the night's anomaly rows) or "recomputed"


def series_night(
    settings: Settings, series_ids: list[str], night: date, history_days: int = 7
) -> list[SeriesNight]:
    """The recent history, forecast band and flagged points of ``series_ids`` on ``night``.

    Raises a ValueError naming the fix for an unknown series id or a night outside the
    dataset, and a LookupError for a cluster without a model.
    """
    if not series_ids:
        raise ValueError("no series id given: name at least one (see `tsmeta anomalies`)")
    if history_days < 1:
        raise ValueError(f"history_days must be at least 1, received {history_days}")
    ids = [str(s) for s in dict.fromkeys(series_ids)]
    engine = engine_for(settings)
    located = _locate(engine, ids)
    models = load_latest_models(engine, model_dir=settings.model_dir)
    for cid in located.get_column("cluster_id").unique().sort().to_list():
        if cid not in models:
            raise LookupError(f"cluster {cid} has no model yet: run `tsmeta train --cluster {cid}`")
    dates = dataset_dates(settings.dataset_path)
    if night not in dates:
        span = f"{dates[0]}..{dates[-1]}" if dates else "no dates"
        raise ValueError(
            f"no data for {night} in {settings.dataset_path} (it holds {span}): pick a date "
            "inside that range"
        )
    # the residual history the nightly job judges the night against (as it builds it where
    # none is saved: the nights before it scored first, here for these series alone)
    prior = NightHistory.stored(settings, night) if settings.own_history else None
    empty = prior is not None and prior.empty
    warm = [(night - d).days for d in warmup_nights(settings, night, dates)] if empty else []
    panel, row_of, night_start, shown = _read_window(settings, ids, night, history_days, models,
                                                     dates, max(warm, default=0))  # fmt: skip
    stored = query_anomalies(engine, night, night, ids)
    night_run = _night_was_run(engine, night)
    step = np.timedelta64(int(freq_timedelta(settings.freq).total_seconds() * 1e6), "us")
    ts = (np.datetime64(panel.start, "us") + np.arange(panel.values.shape[1]) * step)[shown:]
    spd, rate, T = settings.steps_per_day, settings.false_alarm_rate, panel.values.shape[1]
    out = []
    for cid, part in located.group_by("cluster_id", maintain_order=True):
        version, model = models[cid[0]]
        rows = np.array([row_of[s] for s in part.get_column("series_id")])
        H = model.config.horizon
        history = prior if not warm else NightHistory(
            clip=settings.history_clip, hold=settings.hold_flagged,
            jumps=not settings.causal)  # fmt: skip
        for d in warm:  # the nights before it, oldest first
            earlier = _scored(settings, panel, rows, T - d * spd, cid[0], model, history)
            history.apply(earlier, rate, cid[0])
            history = history.next()
        day = _scored(settings, panel, rows, T, cid[0], model, history)
        if history is not None:
            day = history.apply(day, rate, cid[0])
        night_ts = ts[-H:]
        # the night's flags: the stored rows when the night was run, else this scoring's,
        # as the nightly job would have written them
        found = stored if night_run else points_frame(
            day, night_start, settings.freq, cid[0], version, settings.false_alarm_rate
        )  # fmt: skip
        for j, sid in enumerate(part.get_column("series_id").to_list()):
            flags = found.filter(pl.col("series_id") == sid).select(
                "ts", "value", "forecast", "score", "direction", "severity"
            )
            out.append(
                SeriesNight(
                    series_id=sid,
                    cluster_id=cid[0],
                    model_version=version,
                    night=night,
                    ts=ts,
                    value=np.where(panel.mask[rows[j]], panel.values[rows[j]], np.nan)[shown:],
                    night_ts=night_ts,
                    forecast=day.forecast[j],
                    lower=day.lower[j],
                    upper=day.upper[j],
                    score=day.score[j],
                    basis=BASIS[day.basis[j]],
                    flags=flags,
                    flags_from="stored" if night_run else "recomputed",
                )  # fmt: skip
            )
    order = {s: i for i, s in enumerate(ids)}
    return sorted(out, key=lambda v: order[v.series_id])


def _scored(settings: Settings, panel: Panel, rows: np.ndarray, end: int, cluster_id: str,
            model: object, history: NightHistory | None) -> object:  # fmt: skip
    """The night ending at column ``end`` of ``panel``'s ``rows``, from the window the
    nightly job reads: the history's shared events and the night before's held flags left
    out (``NightHistory.without_events``)."""
    window = Panel(panel.values[rows, :end], panel.mask[rows, :end], panel.series_ids[rows],
                   panel.start, panel.freq)  # fmt: skip
    if history is not None:
        window = history.without_events(window, cluster_id, model.config.k, model.config.horizon,
                                        settings.holidays, period_of_cluster(cluster_id))  # fmt: skip
    return score_day(window.values, window.mask, window.series_ids, panel.start_step, model,
                     settings.false_alarm_rate, causal=settings.causal)  # fmt: skip


def _night_was_run(engine, night: date) -> bool:  # noqa: ANN001
    """Whether a nightly run of ``night`` finished (then its stored rows are the flags)."""
    return latest_nightly_run(engine, night) is not None


def latest_nightly_run(engine, night: date) -> dict | None:  # noqa: ANN001
    """The most recent completed/partial nightly run record of ``night`` (or None)."""
    import sqlalchemy as sa

    from tsmeta.store.schema import runs

    with engine.connect() as conn:
        found = conn.execute(
            sa.select(runs).where(runs.c.flow == "nightly").order_by(runs.c.started_at.desc())
        ).mappings()
        for r in found:
            if (r["parameters"] or {}).get("night") == night.isoformat() and r["status"] in (
                "completed", "partial",
            ):  # fmt: skip
                return dict(r)
    return None


def _locate(engine: object, ids: list[str]) -> pl.DataFrame:
    """series_id, period, strength, cluster_id of each id; a ValueError naming the unknown."""
    profile = read_profile(engine).with_columns(pl.col("series_id").cast(pl.String))
    located = pl.DataFrame({"series_id": ids}).join(profile, on="series_id", how="left")
    unknown = located.filter(pl.col("cluster_id").is_null()).get_column("series_id").to_list()
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"unknown series id {shown}: not in the profile; list flagged series with "
            "`tsmeta anomalies`, or run `tsmeta profile` if the series is new"
        )
    return located


def _read_window(
    settings: Settings, ids: list[str], night: date, history_days: int, models: dict,
    dates: list[date], earlier_days: int = 0,
) -> tuple[object, dict[str, int], datetime, int]:  # fmt: skip
    """(the series' panel over the history and the window scoring reads, and
    ``earlier_days`` more before them, row of each id, the night's start, the first column
    shown: after those earlier days); a ValueError when a series has no point in it."""
    spd = settings.steps_per_day
    reach = max(
        window_reach(m.spec, m.config.k, m.config.horizon) for _, m in models.values()
    )  # as scoring
    days = max(history_days, math.ceil(reach / spd))
    first = max(night - timedelta(days=days + earlier_days), dates[0])
    shown = (max(night - timedelta(days=days), dates[0]) - first).days * spd
    begin, _ = night_bounds(first)
    night_start, finish = night_bounds(night)
    frame = (
        scan_dataset(settings.dataset_path, first, night + timedelta(days=1))
        .filter(pl.col("series_id").cast(pl.String).is_in(ids))
        .collect()
    )
    panel = scatter_panel(frame, settings.freq, begin.replace(tzinfo=None),
                          finish.replace(tzinfo=None))  # fmt: skip
    row_of = {str(s): i for i, s in enumerate(panel.series_ids)}
    missing = [s for s in ids if s not in row_of]
    if missing:
        raise ValueError(
            f"series {missing[0]!r} has no points in {first}..{night}: it stopped reporting; "
            "pick an earlier date"
        )
    return panel, row_of, night_start, shown
