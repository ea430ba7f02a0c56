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

__all__ = ["APERIODIC", "PeriodResult", "autocorrelation", "acf_at_lags", "detect_periods"]

APERIODIC = 0


@dataclass(frozen=True)
class PeriodResult:
    period: np.ndarray  # (n,) int32, 0 = aperiodic
    strength: np.ndarray  # (n,) float32, ACF at the chosen period (0 if aperiodic)
    acf: np.ndarray  # (n, len(candidates)) float32, ACF at each candidate (NaN if too short)
    candidates: tuple[int, ...]


def _detrended(values: np.ndarray, mask: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Series minus their least-squares line through the observed points, scaled to unit
    variance, zero where unobserved; and the scale (0 for constant or empty series)."""
    m = mask.astype(dtype)
    x = np.where(mask, values, 0.0).astype(dtype)
    safe_n = np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    t = np.arange(x.shape[1], dtype=dtype)[None, :]
    t_mean = (m * t).sum(1, keepdims=True) / safe_n
    x_mean = x.sum(1, keepdims=True) / safe_n
    tc = (t - t_mean) * m
    slope = (tc * (x - x_mean)).sum(1, keepdims=True) / np.maximum(
        (tc * tc).sum(1, keepdims=True), 1e-12
    )
    x = (x - x_mean - slope * (t - t_mean)) * m
    scale = np.sqrt((x * x).sum(1, keepdims=True) / safe_n)
    return x / np.where(scale > 0, scale, 1.0), scale


def autocorrelation(
    values: np.ndarray, mask: np.ndarray, max_lag: int
) -> tuple[np.ndarray, np.ndarray]:
    """Autocorrelation at lags 0..max_lag of each row, over observed pairs only.

    values (n, T) float, mask (n, T) bool -> acf (n, max_lag + 1), pairs (n, max_lag + 1).
    Each lag's value is the Pearson correlation of the observed pairs (x_t, x_{t+lag}) of
    the linearly detrended series, so gaps neither shrink it nor push it above 1. All lags of
    all rows come from six FFTs.
    """
    x, scale = _detrended(values, mask, np.float64)
    m = mask.astype(np.float64)

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


def acf_at_lags(
    values: np.ndarray, mask: np.ndarray, lags: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``autocorrelation`` at a few lags only: (n, len(lags)) ACF and observed pair counts.

    Same definition (Pearson over the observed pairs of the detrended series), computed
    directly: a handful of dot products per lag instead of FFTs over every lag, which is
    what period detection needs (the candidates and their neighbours). float32.
    """
    x, scale = _detrended(values, mask, np.float32)
    m = mask.astype(np.float32)
    x2 = x * x
    T = x.shape[1]
    acf = np.zeros((x.shape[0], len(lags)), dtype=np.float32)
    pairs = np.zeros((x.shape[0], len(lags)), dtype=np.float32)
    for j, lag in enumerate(lags):
        if lag >= T:
            continue
        a, b = slice(0, T - lag), slice(lag, T)
        n = np.einsum("ij,ij->i", m[:, a], m[:, b])
        s_x = np.einsum("ij,ij->i", x[:, a], m[:, b])  # leading members with a partner
        s_y = np.einsum("ij,ij->i", m[:, a], x[:, b])
        s_xx = np.einsum("ij,ij->i", x2[:, a], m[:, b])
        s_yy = np.einsum("ij,ij->i", m[:, a], x2[:, b])
        s_xy = np.einsum("ij,ij->i", x[:, a], x[:, b])
        safe = np.maximum(n, 1.0)
        denom = np.sqrt(
            np.maximum(s_xx - s_x * s_x / safe, 0.0) * np.maximum(s_yy - s_y * s_y / safe, 0.0)
        )
        ok = (denom > 1e-6 * safe) & (n >= 3) & (scale[:, 0] > 1e-12)
        acf[:, j] = np.where(ok, (s_xy - s_x * s_y / safe) / np.where(ok, denom, 1.0), 0.0)
        pairs[:, j] = n
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
    wanted = sorted({lag for p in cands for lag in (p - max(1, p // 8), p, p + max(1, p // 8))})
    col = {lag: i for i, lag in enumerate(wanted)}
    acf, pairs = acf_at_lags(values, mask, wanted)

    at = np.full((n, len(cands)), np.nan, dtype=np.float64)
    ok = np.zeros((n, len(cands)), dtype=bool)
    n_pairs = np.ones((n, len(cands)))
    for j, p in enumerate(cands):
        if p >= T - 1:
            continue
        at[:, j] = acf[:, col[p]]
        n_pairs[:, j] = np.maximum(pairs[:, col[p]], 1.0)
        band = 1.96 / np.sqrt(n_pairs[:, j])
        # a period is a peak of the ACF against lags p -+ p/8 (smooth series correlate at
        # every short lag; a one-lag comparison is noise on a broad peak)
        w = max(1, p // 8)
        peak = acf[:, col[p]] >= acf[:, col[p - w]]
        if p + w < T:
            peak &= acf[:, col[p]] >= acf[:, col[p + w]]
        ok[:, j] = (pairs[:, col[p]] >= min_pairs) & (at[:, j] > np.maximum(min_acf, band)) & peak

    period = np.zeros(n, dtype=np.int32)
    strength = np.zeros(n, dtype=np.float64)
    for j, p in enumerate(cands):  # ascending: shortest accepted wins unless beaten by margin
        # margin: at least harmonic_margin, more where the ACF is noisy (its standard error
        # (1 - r^2) / sqrt(pairs))
        se = (1 - np.minimum(at[:, j], 1.0) ** 2) / np.sqrt(n_pairs[:, j])
        margin = np.maximum(harmonic_margin, 2.5 * se)
        take = ok[:, j] & ((period == APERIODIC) | (at[:, j] > strength + margin))
        period[take] = p
        strength[take] = at[take, j]
    return PeriodResult(period, strength.astype(np.float32), at.astype(np.float32), cands)
