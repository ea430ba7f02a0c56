"""Synthetic corpus with known periods and labelled anomalies.

Series are generated in blocks of ``BLOCK`` series, each block from its own random
stream ``default_rng([seed, block])``, so the output depends only on the seed and the
series index, never on how the work was chunked. Everything is vectorised over the
series of a block; the only Python loops run over time steps (AR noise), anomaly kinds
and days.

Each series: ``level + scale * (season + trend + noise + anomalies)`` with

* period class below a day: a day of steps (hourly: 24; daily shape), a week (hourly: 168;
  daily shape damped at weekends plus a weekly harmonic) or aperiodic (AR(1)); daily data:
  7 or aperiodic; anomaly lengths are in hours whatever the step;
* magnitudes spanning five orders (``scale`` in 10^[-1, 4]), some near-zero levels;
* missing points (absent rows) in about a third of the series;
* anomalies of six kinds: spike, dip, level_shift, variance_burst, seasonal_change,
  flatline, sized in units of the series' own noise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from tsmeta.data.io import write_parquet_atomic
from tsmeta.data.panel import freq_timedelta, steps_since_epoch
from tsmeta.frequency import normalise_freq, steps_per_day

__all__ = [
    "ANOMALY_KINDS",
    "BLOCK",
    "FAMILIES",
    "GeneratedBlock",
    "generate_blocks",
    "generate_frame",
    "write_synthetic_dataset",
    "read_labels",
    "read_series_meta",
]

BLOCK = 8192  # series per random stream (fixed: changing it changes every dataset)
ANOMALY_KINDS = ("spike", "dip", "level_shift", "variance_burst", "seasonal_change", "flatline")
APERIODIC = 0  # period code for "no period"
GENERATOR_VERSION = 1


@dataclass
class GeneratedBlock:
    index: int
    series_ids: np.ndarray  # (n,) str
    values: np.ndarray  # (n, T) float32, NaN where missing
    periods: np.ndarray  # (n,) int, 0 = aperiodic
    scales: np.ndarray  # (n,) float
    labels: pl.DataFrame  # series_id, kind, start, end (exclusive), magnitude


def _seasonal(g: np.ndarray, period: int, coef: np.ndarray) -> np.ndarray:
    """Sum of harmonics: coef (n, H, 2) sin/cos weights; g (T,) global steps -> (n, T)."""
    k = np.arange(1, coef.shape[1] + 1)[:, None]  # (H, 1)
    ang = 2 * np.pi * k * (g[None, :] % period) / period  # (H, T)
    return coef[..., 0] @ np.sin(ang) + coef[..., 1] @ np.cos(ang)


def _unit(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=1, keepdims=True)
    return x / np.where(sd > 0, sd, 1.0)


def _season_for(g: np.ndarray, spd: int, periods: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Unit-variance seasonal component per series (zeros for aperiodic); ``spd`` steps a day."""
    n, T = len(periods), len(g)
    out = np.zeros((n, T))
    if spd > 1:
        daily = _unit(_seasonal(g, spd, coef[:, :3]))
        dow = (g // spd + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        weekend = (dow >= 5).astype(float)
        week = 7 * spd
        weekly = _unit(
            daily * (1.0 - 0.7 * weekend) + 0.8 * _unit(_seasonal(g, week, coef[:, 3:4]))
        )
        out = np.where((periods == spd)[:, None], daily, out)
        out = np.where((periods == week)[:, None], weekly, out)
    else:
        weekly = _unit(_seasonal(g, 7, coef[:, :2]))
        out = np.where((periods == 7)[:, None], weekly, out)
    return out


def _generate_block(
    block: int, first: int, n: int, g: np.ndarray, freq: str, seed: int,
    anomaly_rate: float, width: int, start: datetime, heavy: bool = False,
) -> GeneratedBlock:  # fmt: skip
    rng = np.random.default_rng([seed, block])
    T = len(g)
    spd = steps_per_day(freq)
    sph = max(1, spd // 24)  # steps per hour (anomaly lengths below are in hours)
    if spd > 1:
        periods = rng.choice([spd, 7 * spd, APERIODIC], size=n, p=[0.45, 0.3, 0.25])
    else:
        periods = rng.choice([7, APERIODIC], size=n, p=[0.7, 0.3])

    coef = rng.normal(size=(n, 4, 2)) * np.array([1.0, 0.5, 0.3, 1.0])[None, :, None]
    base = _season_for(g, spd, periods, coef)  # (n, T), unit variance where periodic

    # aperiodic series carry AR(1) structure instead of a season
    phi = rng.uniform(0.5, 0.95, size=n)
    shocks = rng.normal(size=(n, T))
    ar = np.empty((n, T))
    ar[:, 0] = shocks[:, 0]
    for t in range(1, T):  # loop over time, vectorised over series
        ar[:, t] = phi * ar[:, t - 1] + np.sqrt(1 - phi**2) * shocks[:, t]
    season = np.where((periods == APERIODIC)[:, None], ar, base)

    noise_sd = rng.uniform(0.05, 0.4, size=n)
    noise = rng.normal(size=(n, T)) * noise_sd[:, None]
    if heavy:  # the heavy family: Student's t noise of the same sd (its own stream: the rest
        # of the corpus is the default family's)
        h_rng = np.random.default_rng([seed, block, 1])
        dof = h_rng.uniform(*HEAVY_DOF, size=n)[:, None]
        noise = h_rng.standard_t(dof, size=(n, T)) / np.sqrt(dof / (dof - 2)) * noise_sd[:, None]
    trend = rng.normal(0, 0.02, size=n)[:, None] * (np.arange(T) / spd)[None, :]
    clean_unit = season + trend  # signal without noise, in units of the seasonal amplitude
    y = clean_unit + noise

    # anomalies: each (series, day) starts one with probability anomaly_rate
    days = T // spd
    hit_rows, hit_days = np.nonzero(rng.random((n, days)) < anomaly_rate)
    m = len(hit_rows)
    kinds = rng.integers(0, len(ANOMALY_KINDS), size=m)
    starts = hit_days * spd + rng.integers(0, spd, size=m)
    starts = np.maximum(starts, 1)
    if spd > 1:
        lengths = np.select(
            [kinds <= 1, kinds == 2, kinds == 4],
            [1, rng.integers(12, 49, size=m), rng.integers(12, 37, size=m)],
            rng.integers(6, 25, size=m),
        )
        lengths = np.where(kinds <= 1, 1, lengths * sph)
    else:
        lengths = np.where(kinds <= 1, 1, rng.integers(2, 6, size=m))
    # seasonal change needs a season; give aperiodic series a spike instead
    kinds = np.where((kinds == 4) & (periods[hit_rows] == APERIODIC), 0, kinds)
    lengths = np.where(kinds == 0, 1, lengths)
    lengths = np.minimum(lengths, T - starts)
    magnitude = rng.uniform(6, 10, size=m)
    sigma_eff = noise_sd[hit_rows] + 0.1  # anomaly size in units of the series' noise

    span = int(lengths.max()) if m else 0
    offs = np.arange(span)[None, :]
    valid = offs < lengths[:, None]  # (m, span)
    cols = np.minimum(starts[:, None] + offs, T - 1)
    rows = np.broadcast_to(hit_rows[:, None], cols.shape)
    sign = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    for code, kind in enumerate(ANOMALY_KINDS):
        sel = (kinds == code)[:, None] & valid
        r, c = rows[sel], cols[sel]
        amp = np.broadcast_to((magnitude * sigma_eff)[:, None], cols.shape)[sel]
        if kind == "spike":
            y[r, c] += amp
        elif kind == "dip":
            y[r, c] -= amp
        elif kind == "level_shift":
            y[r, c] += np.broadcast_to(sign[:, None], cols.shape)[sel] * amp * 0.6
        elif kind == "variance_burst":
            y[r, c] += rng.normal(size=len(r)) * amp * 0.5
        elif kind == "seasonal_change":
            # the season of this stretch replaced by the season half a period later
            half = periods[r] // 2
            y[r, c] += base[r, np.minimum(c + half, T - 1)] * 1.5 - base[r, c]
        elif kind == "flatline":
            stuck = y[hit_rows, starts - 1][:, None]
            y[r, c] = np.broadcast_to(stuck, cols.shape)[sel]

    scale = 10.0 ** rng.uniform(-1, 4, size=n)
    level = np.where(rng.random(n) < 0.05, 0.0, rng.uniform(3, 10, size=n))
    values = (scale[:, None] * (level[:, None] + y)).astype(np.float32)

    # missing points: a third of the series lose 0-5% of their points
    miss_rate = np.where(rng.random(n) < 1 / 3, rng.uniform(0, 0.05, size=n), 0.0)
    values[rng.random((n, T)) < miss_rate[:, None]] = np.nan

    ids = np.char.add("s", np.char.zfill(np.arange(first, first + n).astype(str), width))
    step = freq_timedelta(freq)
    t0 = np.datetime64(start, "us")
    unit = np.timedelta64(int(step / timedelta(microseconds=1)), "us")
    labels = pl.DataFrame(
        {
            "series_id": ids[hit_rows],
            "kind": np.array(ANOMALY_KINDS)[kinds],
            "start": t0 + starts * unit,
            "end": t0 + (starts + lengths) * unit,
            "magnitude": magnitude.astype(np.float32),
        }
    ).with_columns(
        pl.col("start").dt.replace_time_zone("UTC"), pl.col("end").dt.replace_time_zone("UTC")
    )
    return GeneratedBlock(block, ids, values, periods, scale, labels)


def _start(start: date | str) -> tuple[date, datetime]:
    """The first day as a date and as midnight (naive UTC)."""
    start_d = start if isinstance(start, date) else date.fromisoformat(str(start))
    return start_d, datetime(start_d.year, start_d.month, start_d.day)


FAMILIES = ("default", "business", "heavy")
# the heavy family's noise: a Student's t of this many degrees of freedom, drawn per series
# (unit variance: the default family's noise sd; bursts a normal tail calls impossible)
HEAVY_DOF = (2.5, 6.0)


def generate_blocks(
    n_series: int,
    freq: str = "h",
    days: int = 14,
    start: date | str = "2026-11-01",
    seed: int = 0,
    anomaly_rate: float = 0.02,
    family: str = "default",
) -> Iterator[GeneratedBlock]:
    """Yield the corpus block by block (``BLOCK`` series each, the last one shorter).

    ``family``: ``default`` (this module's corpus), ``business`` (hourly business
    metrics, ``tsmeta.data.business``) or ``heavy`` (the default corpus with heavy-tailed
    noise, ``HEAVY_DOF``)."""
    freq = normalise_freq(freq)
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, received {family!r}")
    if family == "business" and freq != "h":
        raise ValueError("the business family is hourly: use freq='h' (or family='default')")
    if n_series < 1:
        raise ValueError(f"n_series must be >= 1, received {n_series}")
    if days < 1:
        raise ValueError(f"days must be >= 1, received {days}")
    if not 0 <= anomaly_rate < 1:
        raise ValueError(
            f"anomaly_rate is a probability per series and day, received {anomaly_rate}"
        )
    start_d, start_dt = _start(start)
    T = days * steps_per_day(freq)
    g = steps_since_epoch(start_dt, freq) + np.arange(T)
    width = max(7, len(str(n_series - 1)))
    for block, first in enumerate(range(0, n_series, BLOCK)):
        n = min(BLOCK, n_series - first)
        if family == "business":
            from tsmeta.data.business import generate_business_block

            ids, values, periods, levels, labels = generate_business_block(
                block, first, n, g, seed, anomaly_rate, width, start_dt
            )
            yield GeneratedBlock(block, ids, values, periods, levels, labels)
        else:
            yield _generate_block(block, first, n, g, freq, seed, anomaly_rate, width, start_dt,
                                  heavy=family == "heavy")  # fmt: skip


def _block_long(b: GeneratedBlock, start: datetime, freq: str) -> pl.DataFrame:
    rows, cols = np.nonzero(~np.isnan(b.values))
    step = np.timedelta64(int(freq_timedelta(freq) / timedelta(microseconds=1)), "us")
    return pl.DataFrame(
        {
            "series_id": pl.Series(b.series_ids).gather(rows),
            "ts": np.datetime64(start, "us") + cols * step,
            "value": b.values[rows, cols],
        }
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))


def generate_frame(
    n_series: int, freq: str = "h", days: int = 14, start: date | str = "2026-11-01",
    seed: int = 0, anomaly_rate: float = 0.02, family: str = "default",
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:  # fmt: skip
    """In-memory corpus for tests: (long frame, labels, series meta)."""
    start_d, start_dt = _start(start)
    longs, labels, metas = [], [], []
    for b in generate_blocks(n_series, freq, days, start_d, seed, anomaly_rate, family):
        longs.append(_block_long(b, start_dt, normalise_freq(freq)))
        labels.append(b.labels)
        metas.append(_block_meta(b))
    return pl.concat(longs), pl.concat(labels), pl.concat(metas)


def _block_meta(b: GeneratedBlock) -> pl.DataFrame:
    return pl.DataFrame(
        {"series_id": b.series_ids, "period": b.periods.astype(np.int32), "scale": b.scales}
    )


def write_synthetic_dataset(
    path: str | Path,
    n_series: int,
    freq: str = "h",
    days: int = 14,
    start: date | str = "2026-11-01",
    seed: int = 0,
    anomaly_rate: float = 0.02,
    shard_blocks: int = 8,
    progress: object | None = None,
    family: str = "default",
) -> dict:
    """Write the corpus as a date-partitioned Parquet dataset plus labels and series meta.

    One part file per date per shard of ``shard_blocks * BLOCK`` series (below an hour,
    proportionally fewer: files of about the same rows whatever the step), so each part
    holds a contiguous range of series ids. Returns the manifest (also written as
    ``_meta/manifest.json``). Re-running with the same arguments rewrites the same files.
    """
    freq = normalise_freq(freq)
    root = Path(path)
    start_d, start_dt = _start(start)
    spd = steps_per_day(freq)
    # a part file holds about the same rows whatever the step (fewer series below an hour)
    shard_size = max(1, shard_blocks * 24 // max(spd, 24))
    t_begin = time.perf_counter()
    pending: list[GeneratedBlock] = []
    shard = 0
    rows_written = 0
    n_labels = 0

    def flush() -> None:
        nonlocal shard, rows_written, n_labels
        if not pending:
            return
        values = np.concatenate([b.values for b in pending])
        ids = np.concatenate([b.series_ids for b in pending])
        merged = GeneratedBlock(shard, ids, values, np.concatenate([b.periods for b in pending]),
                                np.concatenate([b.scales for b in pending]),
                                pl.concat([b.labels for b in pending]))  # fmt: skip
        name = f"part-{shard:05d}.parquet"
        for d in range(days):
            day_vals = merged.values[:, d * spd : (d + 1) * spd]
            day_block = GeneratedBlock(
                shard, ids, day_vals, merged.periods, merged.scales, merged.labels
            )
            frame = _block_long(day_block, start_dt + timedelta(days=d), freq)
            day = (start_d + timedelta(days=d)).isoformat()
            write_parquet_atomic(frame, root / f"date={day}" / name)
            rows_written += frame.height
        write_parquet_atomic(merged.labels, root / "_meta" / "labels" / name)
        write_parquet_atomic(_block_meta(merged), root / "_meta" / "series" / name)
        n_labels += merged.labels.height
        if progress is not None:
            progress(len(ids))  # type: ignore[operator]
        pending.clear()
        shard += 1

    for b in generate_blocks(n_series, freq, days, start_d, seed, anomaly_rate, family):
        pending.append(b)
        if len(pending) >= shard_size:
            flush()
    flush()
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "family": family,
        "n_series": n_series,
        "freq": freq,
        "days": days,
        "start": start_d.isoformat(),
        "seed": seed,
        "anomaly_rate": anomaly_rate,
        "shards": shard,
        "rows": rows_written,
        "anomalies": n_labels,
        "seconds": round(time.perf_counter() - t_begin, 2),
    }
    (root / "_meta").mkdir(parents=True, exist_ok=True)
    (root / "_meta" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def read_labels(path: str | Path) -> pl.DataFrame:
    """Anomaly labels of a generated dataset (series_id, kind, start, end, magnitude)."""
    folder = Path(path) / "_meta" / "labels"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no labels at {folder}: labels exist only for datasets made by `tsmeta generate`"
        )
    return pl.read_parquet(folder / "*.parquet")


def read_series_meta(path: str | Path) -> pl.DataFrame:
    """True period (0 = aperiodic) and scale of each generated series (the business
    family: 168 or 0, and the hourly level)."""
    return pl.read_parquet(Path(path) / "_meta" / "series" / "*.parquet")
