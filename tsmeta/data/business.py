"""A second generated family: hourly business metrics (orders, sign-ups, traffic, revenue).

Made to differ from ``tsmeta.data.synthetic`` in the ways real business data does, so
that detection is judged on phenomena it was not tuned to:

* multiplicative daily x weekly seasonality: a per-series daily shape (one or two peaks at
  their own hours) times a weekend level between 0.3x and 1.2x of the weekdays;
* noise that grows with the level (Poisson-like, with some overdispersion); levels from 5
  to 50,000 per hour, small ones rounded to counts;
* slow multiplicative trends, and in about a tenth of the series one permanent break of
  level (the new normal from then on; labelled ``break``, not an anomaly);
* a sixth of the series are random walks (in log space) with no period;
* one shared holiday, a weekday on which every series runs at 0.5-0.7x (labelled
  ``holiday``: context for the evaluation, not an anomaly of any one series);
* 0.5% missing points;
* anomalies: spikes and dips, level shifts of 6-48 hours, 24-hour ramps, flatlines of
  6-24 hours, a day that loses its daily shape, an extra bump at an unusual hour.

Blocks follow ``synthetic``'s contract (``default_rng([seed, block, FAMILY_SALT])`` per
block of ``BLOCK`` series), so a dataset depends only on its arguments.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl

__all__ = ["BUSINESS_KINDS", "CONTEXT_KINDS", "holiday_day", "generate_business_block"]

BUSINESS_KINDS = ("spike", "dip", "level_shift", "ramp", "flatline", "lost_season", "extra_bump")
CONTEXT_KINDS = ("holiday", "break")  # labelled context, not anomalies of a series
_SALT = 2  # keeps this family's random streams apart from the default family's


def holiday_day(days: int, start: datetime) -> int:
    """The day index of the shared holiday: the first Wednesday of the fifth week (or the
    last weekday when the corpus is shorter)."""
    first = 28 if days > 30 else max(0, days - 3)
    for d in range(first, days):
        if (start + timedelta(days=d)).weekday() == 2:
            return d
    return first


def _daily_shape(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 24) positive daily profiles with mean 1: one or two peaks at their own hours."""
    h = np.arange(24)[None, :]

    def bump(center: np.ndarray, width: np.ndarray) -> np.ndarray:
        d = np.abs(h - center[:, None])
        d = np.minimum(d, 24 - d)  # circular distance in hours
        return np.exp(-0.5 * (d / width[:, None]) ** 2)

    first = bump(rng.uniform(9, 14, n), rng.uniform(2, 4.5, n))
    second = (
        bump(rng.uniform(18, 22, n), rng.uniform(1.5, 3.5, n))
        * (rng.uniform(0, 1, n) * (rng.random(n) < 0.6))[:, None]
    )
    shape = rng.uniform(0.05, 0.4, n)[:, None] + first * rng.uniform(0.8, 2.5, n)[:, None] + second
    return shape / shape.mean(axis=1, keepdims=True)


def generate_business_block(
    block: int, first: int, n: int, g: np.ndarray, seed: int, anomaly_rate: float, width: int,
    start: datetime,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pl.DataFrame]:  # fmt: skip
    """One block: (series_ids, values (n, T) float32 with NaN, periods, levels, labels)."""
    rng = np.random.default_rng([seed, block, _SALT])
    T = len(g)
    days = T // 24
    hour = g % 24
    dow = (g // 24 + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    weekend = dow >= 5

    walk = rng.random(n) < 1 / 6
    periods = np.where(walk, 0, 168)
    level = 10 ** rng.uniform(np.log10(5), np.log10(50_000), n)
    shape = _daily_shape(rng, n)[:, hour]  # (n, T)
    weekend_level = rng.uniform(0.3, 1.2, n)
    season = shape * np.where(weekend[None, :], weekend_level[:, None], 1.0)
    t_days = np.arange(T)[None, :] / 24
    trend = np.exp(rng.normal(0, 0.004, n)[:, None] * t_days)
    mean = level[:, None] * season * trend
    # random walks: log-level steps, no period (their "season" is flat)
    steps = rng.normal(0, rng.uniform(0.005, 0.02, n)[:, None], (n, T))
    rw = level[:, None] * np.exp(np.cumsum(steps, axis=1))
    mean = np.where(walk[:, None], rw, mean)

    # one permanent break of level in a tenth of the series (the new normal)
    breaks = np.nonzero(rng.random(n) < 0.1)[0]
    break_day = rng.integers(min(25, days - 1), max(min(25, days - 1) + 1, days - 3), len(breaks))
    factor = np.where(rng.random(len(breaks)) < 0.5, rng.uniform(0.55, 0.75, len(breaks)),
                      rng.uniform(1.35, 1.8, len(breaks)))  # fmt: skip
    for r, d, f in zip(breaks, break_day, factor, strict=True):
        mean[r, d * 24 :] *= f

    # the shared holiday: every series runs at 0.5-0.7x that day
    hol = holiday_day(days, start)
    if hol < days:
        mean[:, hol * 24 : (hol + 1) * 24] *= rng.uniform(0.5, 0.7, n)[:, None]

    dispersion = rng.uniform(1.0, 4.0, n)[:, None]  # variance / mean (Poisson: 1)
    cv = rng.uniform(0.005, 0.03, n)[:, None]  # noise proportional to the level
    sd = np.sqrt(dispersion * mean + (cv * mean) ** 2)
    y = mean + sd * rng.normal(size=(n, T))

    # anomalies: each (series, day) starts one with probability anomaly_rate (not on the
    # holiday, not on a break's day, so that each label says one thing)
    hit_rows, hit_days = np.nonzero(rng.random((n, days)) < anomaly_rate)
    clash = hit_days == hol
    for r, d in zip(breaks, break_day, strict=True):
        clash |= (hit_rows == r) & (hit_days == d)
    hit_rows, hit_days = hit_rows[~clash], hit_days[~clash]
    m = len(hit_rows)
    kinds = rng.integers(0, len(BUSINESS_KINDS), m)
    kinds = np.where((kinds == 5) & walk[hit_rows], 0, kinds)  # a walk has no shape to lose
    starts = np.maximum(hit_days * 24 + rng.integers(0, 24, m), 1)
    lengths = np.select(
        [kinds <= 1, kinds == 2, kinds == 3, kinds == 4, kinds == 5],
        [1, rng.integers(6, 49, m), 24, rng.integers(6, 25, m), 24],
        rng.integers(2, 5, m),
    )
    starts = np.where(kinds == 5, hit_days * 24, starts)  # a whole day
    lengths = np.minimum(lengths, T - starts)
    sign = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    magnitude = rng.uniform(5, 9, m)
    for i in range(m):  # one slice per anomaly (a benchmark generator, not a hot path)
        r, a, b = hit_rows[i], starts[i], starts[i] + lengths[i]
        kind, local_sd, local_mean = kinds[i], sd[r, a:b], mean[r, a:b]
        if kind == 0:  # spike
            y[r, a:b] += magnitude[i] * local_sd
        elif kind == 1:  # dip: never below zero
            y[r, a:b] = np.maximum(y[r, a:b] - magnitude[i] * local_sd, 0.0)
        elif kind == 2:  # level shift: at least 4 noise sds, at least 25% of the level
            rel = np.maximum(0.25 + 0.25 * rng.random(), 4 * local_sd / local_mean)
            y[r, a:b] *= np.maximum(1 + sign[i] * rel, 0.05)
        elif kind == 3:  # ramp to +-60% over a day
            y[r, a:b] *= 1 + sign[i] * 0.6 * np.linspace(0, 1, b - a)
        elif kind == 4:  # flatline: stuck at the value before
            y[r, a:b] = y[r, a - 1]
        elif kind == 5:  # the day loses its daily shape: flat at the day's mean
            y[r, a:b] = local_mean.mean() + local_sd * rng.normal(size=b - a) * 0.5
        else:  # an extra bump at the quietest hours
            quiet = np.argmin(mean[r, hit_days[i] * 24 : hit_days[i] * 24 + 24])
            a = hit_days[i] * 24 + quiet
            b = min(a + lengths[i], T)
            starts[i], lengths[i] = a, b - a
            y[r, a:b] += local_mean.mean() * rng.uniform(0.6, 1.2) + 5 * sd[r, a:b]
    y = np.maximum(y, 0.0)
    counts = level < 200
    y[counts] = np.round(y[counts])
    values = y.astype(np.float32)
    values[rng.random((n, T)) < 0.005] = np.nan

    ids = np.char.add("b", np.char.zfill(np.arange(first, first + n).astype(str), width))
    t0 = np.datetime64(start, "us")
    hour_us = np.timedelta64(3_600_000_000, "us")
    label_rows = [ids[hit_rows]]
    label_kind = [np.array(BUSINESS_KINDS)[kinds]]
    label_start, label_end = [starts], [starts + lengths]
    label_mag = [magnitude]
    if len(breaks):
        label_rows.append(ids[breaks])
        label_kind.append(np.full(len(breaks), "break"))
        label_start.append(break_day * 24)
        label_end.append(break_day * 24 + 24)
        label_mag.append(factor)
    if hol < days:
        label_rows.append(ids)
        label_kind.append(np.full(n, "holiday"))
        label_start.append(np.full(n, hol * 24))
        label_end.append(np.full(n, hol * 24 + 24))
        label_mag.append(np.zeros(n))
    labels = pl.DataFrame(
        {
            "series_id": np.concatenate(label_rows),
            "kind": np.concatenate(label_kind),
            "start": t0 + np.concatenate(label_start) * hour_us,
            "end": t0 + np.concatenate(label_end) * hour_us,
            "magnitude": np.concatenate(label_mag).astype(np.float32),
        }
    ).with_columns(
        pl.col("start").dt.replace_time_zone("UTC"), pl.col("end").dt.replace_time_zone("UTC")
    )
    return ids, values, periods, level, labels
