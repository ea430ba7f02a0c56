"""Batched period detection from the autocorrelation function.

All series of a chunk at once: fill missing points with the series mean, remove a linear
trend, and compute the autocorrelation of every series with one FFT. Missing points are
handled by dividing each lag's cross products by the number of observed pairs at that lag
(the ACF of the mask, from the same FFT), so gaps do not shrink the ACF.

A candidate period is accepted when its ACF exceeds both ``min_acf`` and the Bartlett
white-noise band ``1.96 / sqrt(pairs)``. Among accepted candidates the shortest wins
unless a longer one beats it by ``harmonic_margin`` (a weekly series also correlates at
lag 24; only a clearly stronger weekly ACF makes it weekly). No accepted candidate means
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


def autocorrelation(values: np.ndarray, mask: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """ACF at lags 0..max_lag for each row, and the observed pair counts per lag.

    values (n, T) float, mask (n, T) bool -> acf (n, max_lag + 1), pairs (n, max_lag + 1).
    """
    x = np.where(mask, values, 0.0).astype(np.float64)
    m = mask.astype(np.float64)
    n_obs = m.sum(axis=1, keepdims=True)
    safe_n = np.maximum(n_obs, 1.0)
    # detrend: least-squares line through the observed points of each series
    t = np.arange(x.shape[1], dtype=np.float64)[None, :]
    t_mean = (m * t).sum(1, keepdims=True) / safe_n
    x_mean = x.sum(1, keepdims=True) / safe_n
    tc = (t - t_mean) * m
    slope = (tc * (x - x_mean)).sum(1, keepdims=True) / np.maximum((tc * tc).sum(1, keepdims=True), 1e-12)
    x = (x - x_mean - slope * (t - t_mean)) * m  # (n, T), zero where missing

    n_fft = 1 << int(np.ceil(np.log2(2 * x.shape[1])))
    fx = np.fft.rfft(x, n=n_fft, axis=1)
    fm = np.fft.rfft(m, n=n_fft, axis=1)
    cross = np.fft.irfft(fx * np.conj(fx), n=n_fft, axis=1)[:, : max_lag + 1]
    pairs = np.rint(np.fft.irfft(fm * np.conj(fm), n=n_fft, axis=1)[:, : max_lag + 1])
    cov = cross / np.maximum(pairs, 1.0)
    var = cov[:, :1]
    acf = np.where(var > 1e-12 * np.maximum(np.abs(x_mean), 1.0) ** 2, cov / np.where(var > 0, var, 1.0), 0.0)
    return acf, pairs


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
    max_lag = min(max(cands), T - 1)
    acf, pairs = autocorrelation(values, mask, max_lag)

    at = np.full((n, len(cands)), np.nan, dtype=np.float64)
    ok = np.zeros((n, len(cands)), dtype=bool)
    for j, p in enumerate(cands):
        if p > max_lag:
            continue
        at[:, j] = acf[:, p]
        band = 1.96 / np.sqrt(np.maximum(pairs[:, p], 1.0))
        ok[:, j] = (pairs[:, p] >= min_pairs) & (at[:, j] > np.maximum(min_acf, band))

    period = np.zeros(n, dtype=np.int32)
    strength = np.zeros(n, dtype=np.float64)
    for j, p in enumerate(cands):  # ascending: shortest accepted wins unless beaten by margin
        take = ok[:, j] & ((period == APERIODIC) | (at[:, j] > strength + harmonic_margin))
        period[take] = p
        strength[take] = at[take, j]
    return PeriodResult(period, strength.astype(np.float32), at.astype(np.float32), cands)
