"""A series judged against its own past: its residual history.

The cluster's tail model (``tails``) is fitted on the training corpus. A series whose
residuals run larger or smaller than its cluster's (a stream unlike anything trained on)
is then flagged too often or too rarely, and no single threshold serves all series.
``ResidualHistory`` keeps, per series, the count, mean and sum of squared deviations of
its residuals on earlier nights (three numbers a series, merged night by night with
Chan's update), and ``own_tail`` reads a residual's two-sided normal tail against them.
Where the cluster's scale grows with the level (``tsmeta.scoring.level``) the residuals
are divided by each point's level factor first (``ScoredDay.level``), so a busy hour and
a quiet one are judged against one history. The history keeps every residual, flagged
or not: a real change of level is then learned (its residuals widen the scale within a
night or two) instead of flagged forever.

``combined_tail`` joins the two: a point is as rare as the larger of its cluster's and its
own-history tail probabilities say (rare only if both call it rare), times the batch's
factor: the share of the points the cluster's tail alone puts below ``COMBINE_AT`` that
stay below it with both, the same correction as the smallest-of-several's and the veto's
(``tsmeta.scoring.combine``). Without it the larger of two calibrated probabilities is far
below the configured rate: 5.5e-5 and 2.6e-4 of clean points at 1e-3 on the two generated
families (docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from tsmeta.scoring.combine import COMBINE_AT, VETO_FACTOR_MIN

__all__ = ["ResidualHistory", "own_tail", "combined_tail", "MIN_HISTORY", "MIN_COMBINE_POINTS",
           "MIN_COMBINE_SERIES"]  # fmt: skip

MIN_HISTORY = 10  # fewer earlier residuals: no own tail (NaN)
# ``combined_tail`` reads its factor from a batch with at least this many points with both
# tails below ``COMBINE_AT`` by the cluster's (about 1,000 points: 42 series-nights of 24),
# across at least this many series with a history: the factor says how a cluster's two
# opinions overlap. Read from one series it would give back exactly the flags that
# series' own history called ordinary (NAB's single streams: 50.94 to 49.63). Fewer: no
# factor, the larger probability as it is
MIN_COMBINE_POINTS = 50
MIN_COMBINE_SERIES = 20


@dataclass(frozen=True)
class ResidualHistory:
    """Per series: how many residuals, their mean and sum of squared deviations (float64)."""

    count: np.ndarray  # (n,)
    mean: np.ndarray  # (n,)
    m2: np.ndarray  # (n,)

    @classmethod
    def empty(cls, n: int) -> ResidualHistory:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n))

    def merged(self, residual: np.ndarray) -> ResidualHistory:
        """This history with a night's residuals (n, H) added; NaN: not observed. Sums are
        accumulated in float64 whatever the residuals' precision."""
        r = _floating(residual)
        if r.ndim != 2 or r.shape[0] != self.count.shape[0]:
            raise ValueError(f"residuals of shape {r.shape} for a history of "
                             f"{self.count.shape[0]} series; give one row per series")  # fmt: skip
        n_b = np.count_nonzero(~np.isnan(r), axis=1).astype(np.float64)
        total = np.nansum(r, axis=1, dtype=np.float64)
        mean_b = np.divide(total, n_b, out=np.zeros_like(n_b), where=n_b > 0)
        dev = r - mean_b[:, None].astype(r.dtype)
        np.square(dev, out=dev)
        m2_b = np.nansum(dev, axis=1, dtype=np.float64)
        n = self.count + n_b
        delta = mean_b - self.mean
        share = np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)
        return ResidualHistory(
            count=n,
            mean=self.mean + delta * share,
            m2=self.m2 + m2_b + delta**2 * self.count * share,
        )

    def z(self, residual: np.ndarray) -> np.ndarray:
        """|residual - mean| / standard deviation, per series row, in the residuals'
        precision; NaN where the series has fewer than MIN_HISTORY earlier residuals. A
        series whose residuals never varied: 0 at its mean, infinite elsewhere."""
        r = _floating(residual)
        known = self.count >= MIN_HISTORY
        sd = np.sqrt(np.divide(self.m2, self.count, out=np.zeros_like(self.m2), where=known))
        z = r - self.mean[:, None].astype(r.dtype)  # one array, updated in place
        np.abs(z, out=z)
        with np.errstate(divide="ignore", invalid="ignore"):
            z /= sd[:, None].astype(r.dtype)
        flat = known & (sd == 0)
        if flat.any():  # 0/0 at the mean of a series that never varied
            rows = r[flat]
            z[flat] = np.where(rows == self.mean[flat, None], 0.0,
                               np.where(np.isnan(rows), np.nan, np.inf))  # fmt: skip
        z[~known] = np.nan
        return z


def _floating(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def own_tail(residual: np.ndarray, history: ResidualHistory) -> np.ndarray:
    """Two-sided normal tail probability of each residual against its series' history
    (in the residuals' precision; NaN where not scored or without history)."""
    z = history.z(residual)
    np.negative(z, out=z)
    ndtr(z, out=z)
    z *= 2.0
    return z


def combined_tail(cluster: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Each point's tail probability from its cluster's (``cluster``, NaN: not scored) and its
    own history's (``own``, NaN: no history; arrays of one batch): the larger of the two
    times the batch's factor, the share of the points with both whose cluster tail is below
    ``COMBINE_AT`` that the larger one keeps below it (at least ``VETO_FACTOR_MIN``; 1 with
    fewer than ``MIN_COMBINE_POINTS`` such points or ``MIN_COMBINE_SERIES`` series with
    history; arrays (series, steps)). Read where a batch's anomalies are a
    small part of its points, the factor gives the points both call rare back the rate the
    second opinion took away. Points without history keep the cluster's tail; float64."""
    c = np.asarray(cluster, dtype=np.float64)
    o = np.asarray(own, dtype=np.float64)
    both = np.fmax(c, o)  # NaN own: the cluster's; NaN cluster stays NaN below
    has = ~np.isnan(c) & ~np.isnan(o)
    below = int(np.count_nonzero(c[has] < COMBINE_AT))
    series = int(np.count_nonzero(has.any(axis=-1))) if has.ndim == 2 else int(has.any())
    if below >= MIN_COMBINE_POINTS and series >= MIN_COMBINE_SERIES:
        factor = max(int(np.count_nonzero(both[has] < COMBINE_AT)) / below, VETO_FACTOR_MIN)
        both = np.where(has, both * factor, both)
    both[np.isnan(c)] = np.nan
    return both
