"""Batched period detection from the autocorrelation function.

All series of a chunk at once: remove a linear trend fitted to the observed points and
compute, for every lag, the correlation over the pairs of points observed at that lag,
with a handful of FFTs for all series and lags together (missing points are masked out,
never imputed).

A candidate period is accepted when its ACF is a local peak and exceeds both ``min_acf``
and the Bartlett white-noise band ``1.96 / sqrt(pairs)``. Among accepted candidates the shortest wins
unless a longer one beats it by a margin (``harmonic_margin``, or 2.5 standard errors of
the ACF where that is larger): a weekly series also correlates at lag 24, and only a
clearly stronger weekly ACF makes it weekly. No accepted candidate means
aperiodic (period 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["APERIODIC", "PeriodResult", "autocorrelation", "detect_periods"]

APERIODIC = 0


@dataclass(frozen=True)
class PeriodResult:
    period: np.ndarray  # (n,) int32, 0 = aperiodic
    strength: np.ndarray  # (n,) float32, ACF at the chosen period (0 if aperiodic)
    acf: np.ndarray  # (n, len(candidates)) float32, ACF at each candidate (NaN if too short)
    candidates: tuple[int, ...]


def autocorrelation(
    values: np.ndarray, mask: np.ndarray, max_lag: int
) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation at lags 0..max_lag of each row, over observed pairs only.

    values (n, T) float, mask (n, T) bool -> acf (n, max_lag + 1), pairs (n, max_lag + 1).
    Each lag's value is the Pearson correlation of the observed pairs (x_t, x_{t+lag}) of
    the linearly detrended series, so gaps neither shrink it nor push it above 1. All lags of
    all rows come from six FFTs.
    """
    m = mask.astype(np.float64)
    x = np.where(mask, values, 0.0).astype(np.float64)
    n_obs = m.sum(axis=1, keepdims=True)
    safe_n = np.maximum(n_obs, 1.0)
    # detrend: least-squares line through the observed points of each series
    t = np.arange(x.shape[1], dtype=np.float64)[None, :]
    t_mean = (m * t).sum(1, keepdims=True) / safe_n
    x_mean = x.sum(1, keepdims=True) / safe_n
    tc = (t - t_mean) * m
    slope = (tc * (x - x_mean)).sum(1, keepdims=True) / np.maximum(
        (tc * tc).sum(1, keepdims=True), 1e-12
    )
    x = (x - x_mean - slope * (t - t_mean)) * m  # (n, T), zero where missing
    scale = np.sqrt((x * x).sum(1, keepdims=True) / safe_n)
    x = x / np.where(scale > 0, scale, 1.0)  # unit variance: keeps the sums well conditioned

    n_fft = 1 << int(np.ceil(np.log2(2 * x.shape[1])))
    fx, fm, fxx = (np.fft.rfft(a, n=n_fft, axis=1) for a in (x, m, x * x))

    def lagged(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:  # sum_t a_t * b_{t+lag}
        return np.fft.irfft(np.conj(fa) * fb, n=n_fft, axis=1)[:, : max_lag + 1]

    pairs = np.rint(lagged(fm, fm))
    n = np.maximum(pairs, 1.0)
    s_xy = lagged(fx, fx)
    s_x, s_y = lagged(fx, fm), lagged(fm, fx)  # sums of the leading / lagged members
    s_xx, s_yy = lagged(fxx, fm), lagged(fm, fxx)
    var_x = np.maximum(s_xx - s_x * s_x / n, 0.0)
    var_y = np.maximum(s_yy - s_y * s_y / n, 0.0)
    denom = np.sqrt(var_x * var_y)
    ok = (denom > 1e-9 * n) & (pairs >= 3) & (scale > 1e-12)
    acf = np.where(ok, (s_xy - s_x * s_y / n) / np.where(ok, denom, 1.0), 0.0)
    return np.clip(acf, -1.0, 1.0), pairs


def detect_periods(
    values: np.ndarray,
    mask: np.ndarray,
    candidates: Sequence[int] = (24, 168),
    min_acf: float = 0.3,
    harmonic_margin: float = 0.03,
    min_pairs: int = 24,
) -> PeriodResult:
    """Dominant period of each series among ``candidates`` (0 = aperiodic).

    Constant, all-missing and too-short series come back aperiodic with strength 0.
    """
    if values.shape != mask.shape or values.ndim != 2:
        raise ValueError(f"values {values.shape} and mask {mask.shape} must be equal 2-D shapes")
    cands = tuple(sorted(int(c) for c in candidates))
    if not cands or cands[0] < 2:
        raise ValueError(f"candidate periods must be integers >= 2, received {list(candidates)}")
    n, T = values.shape
    max_lag = min(max(cands) + max(cands) // 8, T - 1)
    acf, pairs = autocorrelation(values, mask, max_lag)

    at = np.full((n, len(cands)), np.nan, dtype=np.float64)
    ok = np.zeros((n, len(cands)), dtype=bool)
    for j, p in enumerate(cands):
        if p > max_lag:
            continue
        at[:, j] = acf[:, p]
        band = 1.96 / np.sqrt(np.maximum(pairs[:, p], 1.0))
        # a period is a peak of the ACF against lags p -+ p/8 (smooth series correlate at
        # every short lag; a one-lag comparison is noise on a broad peak)
        w = max(1, p // 8)
        peak = acf[:, p] >= acf[:, p - w]
        if p + w <= max_lag:
            peak &= acf[:, p] >= acf[:, p + w]
        ok[:, j] = (pairs[:, p] >= min_pairs) & (at[:, j] > np.maximum(min_acf, band)) & peak

    period = np.zeros(n, dtype=np.int32)
    strength = np.zeros(n, dtype=np.float64)
    for j, p in enumerate(cands):  # ascending: shortest accepted wins unless beaten by margin
        # margin: at least harmonic_margin, more where the ACF is noisy (its standard error
        # (1 - r^2) / sqrt(pairs))
        se = (1 - np.minimum(at[:, j], 1.0) ** 2) / np.sqrt(
            np.maximum(pairs[:, min(p, max_lag)], 1.0)
        )
        margin = np.maximum(harmonic_margin, 2.5 * se)
        take = ok[:, j] & ((period == APERIODIC) | (at[:, j] > strength + margin))
        period[take] = p
        strength[take] = at[take, j]
    return PeriodResult(period, strength.astype(np.float32), at.astype(np.float32), cands)
