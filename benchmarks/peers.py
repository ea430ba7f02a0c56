"""The detectors that ``families.py`` runs beside tsmeta, each scoring a point from the
history before it only (causal), on the (series, hour) grid of an hourly panel.

* ``peer_z``: a reference forecast (the value a week before: seasonal naive; the median
  of the same hour 1-3 weeks before) and a robust z of its residual against the previous
  7 days' residuals (median and MAD);
* ``mstl_z``: statsforecast's MSTL with daily and weekly seasons and its 95% interval;
* ``discord_z``: STUMPY's matrix profile (the library detector): each day-long
  subsequence's z-normalised distance to its nearest earlier subsequence (the left
  matrix profile, a discord score), as a robust z against the previous 7 days' distances.
  Chosen as the library peer because matrix-profile discords are the best-known
  general-purpose detector for univariate series (they need no model of the seasons) and
  STUMPY installs here from wheels (numba; its first call compiles for about 20 s).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

WEEK = 168


def normal_quantile(p: float) -> float:
    """z with two-sided tail probability p (bisection on erfc; no scipy needed)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.erfc(mid / math.sqrt(2)) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _rolling_median_mad(resid: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 * MAD of the previous ``window`` residuals at every step (NaN-aware)."""
    n, T = resid.shape
    windows = np.lib.stride_tricks.sliding_window_view(
        np.concatenate([np.full((n, window), np.nan), resid], axis=1), window, axis=1
    )[:, :T]  # (n, T, window): the window steps before t
    with warnings.catch_warnings():  # a window with no residual yet is NaN, as it should be
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(windows, axis=2)
        mad = 1.4826 * np.nanmedian(np.abs(windows - med[:, :, None]), axis=2)
    return med, mad


def peer_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|z| of each point's residual from ``reference`` against the previous 7 days' residuals."""
    resid = values - reference
    med, mad = _rolling_median_mad(resid, WEEK)
    floor = 1e-6 * np.nanmedian(np.abs(values), axis=1, keepdims=True) + 1e-9
    return np.abs(resid - med) / np.maximum(mad, floor)


def mstl_z(values: np.ndarray, first: int, every: int = WEEK,
           history: int = 3 * WEEK) -> np.ndarray:  # fmt: skip
    """|z| of every point from column ``first`` on from statsforecast's MSTL (seasons of a
    day and a week; its trend and remainder by AutoETS), refit every ``every`` hours on the
    ``history`` hours before (gaps filled forward): the point's distance from the forecast
    over its 95% interval's half-width / 1.96. Refit weekly, not nightly: at about 0.12 s
    a fit, 35 nightly refits of 1,000 series would cost over an hour a family."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL

    n, total = values.shape
    out = np.full((n, total - first), np.nan)
    for t0 in range(first, total, every):
        h = min(every, total - t0)
        y = pd.DataFrame(values[:, t0 - history : t0].T).ffill().bfill().fillna(0.0).to_numpy().T
        df = pd.DataFrame({"unique_id": np.repeat(np.arange(n), history),
                           "ds": np.tile(np.arange(history), n), "y": y.ravel()})  # fmt: skip
        fc = (StatsForecast(models=[MSTL(season_length=[24, WEEK])], freq=1, n_jobs=1)
              .forecast(df=df, h=h, level=[95]).sort_values(["unique_id", "ds"]))  # fmt: skip
        mean = fc["MSTL"].to_numpy().reshape(n, h)
        half = (fc["MSTL-hi-95"] - fc["MSTL-lo-95"]).to_numpy().reshape(n, h) / (2 * 1.959964)
        miss = np.abs(values[:, t0 : t0 + h] - mean)
        out[:, t0 - first : t0 - first + h] = miss / np.maximum(half, 1e-9)
    return out


def _left_distances(x: np.ndarray, m: int) -> np.ndarray:
    """z-normalised distance of every length-``m`` subsequence of ``x`` to its nearest
    earlier one (outside the trivial-match zone), from STUMPY's left matrix profile
    indices; NaN where there is none."""
    import stumpy

    mp = stumpy.stump(x, m)
    left = mp.left_I_.astype(np.int64)
    sub = np.lib.stride_tricks.sliding_window_view(x, m)
    sd = sub.std(axis=1)
    z = (sub - sub.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)[:, None]
    has = left >= 0
    j = np.where(has, left, 0)
    corr = np.clip((z * z[j]).sum(axis=1) / m, -1.0, 1.0)
    d = np.sqrt(2 * m * (1 - corr))
    # STUMPY's convention for constant subsequences: 0 between two, sqrt(m) otherwise
    flat_i, flat_j = sd == 0, sd[j] == 0
    d = np.where(flat_i & flat_j, 0.0, np.where(flat_i | flat_j, math.sqrt(m), d))
    return np.where(has, d, np.nan)


def discord_z(values: np.ndarray, first: int, m: int = 24) -> np.ndarray:
    """z of every point from column ``first`` on from the left matrix profile: the
    distance of the ``m``-hour subsequence ending at the point to its nearest earlier
    subsequence, against the median and MAD of the previous 7 days' distances (one-sided:
    only a large distance is anomalous). Gaps are filled forward (backward at the start)."""
    n, total = values.shape
    ok = ~np.isnan(values)
    idx = np.maximum.accumulate(np.where(ok, np.arange(total), -1), axis=1)
    first_ok = np.argmax(ok, axis=1)[:, None]
    filled = np.take_along_axis(values, np.where(idx >= 0, idx, first_ok), axis=1)
    dist = np.full((n, total), np.nan)
    for i in np.nonzero(ok.any(axis=1))[0]:  # a series at a time, as the library works
        dist[i, m - 1 :] = _left_distances(filled[i], m)
    med, mad = _rolling_median_mad(dist, WEEK)
    z = np.maximum(dist - med, 0.0) / np.maximum(mad, 1e-9)
    return z[:, first:]
