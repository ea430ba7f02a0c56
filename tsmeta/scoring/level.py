"""Noise that grows with the level: one residual scale per series is wrong for counts.

A series of counts (requests, orders, sessions) is noisier in its busy hours than in its
quiet ones: Poisson noise grows as the square root of the level, multiplicative errors as
the level itself. One residual scale per series then flags its busy hours and misses its
quiet ones, and a cluster's per-weekday factors, fitted over the whole cluster, cannot follow
each series' own shape. Each point's residual scale is therefore multiplied by its level
ratio, the forecast over the mean of the series' support (``level_ratio``), to a power
chosen per cluster by the calibration sample (``fit_level_power``): the power whose scaled
|z| has the same median at every level; 0 (one scale) where the residuals do not grow with
the level or the levels do not vary. A series' own residual history
(``tsmeta.jobs.history``) keeps its residuals divided by the same factor, so a busy hour
and a quiet one are compared with its past at one level.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LEVEL_POWERS", "level_ratio", "level_factor", "fit_level_power"]

LEVEL_POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the candidates (0.5: counts, 1: multiplicative)
RATIO_CLIP = (0.1, 10.0)  # a level ratio outside this is clipped to it
LEVEL_BINS = 5  # points are grouped by level ratio into this many equal-count bins
# fewer points, or level ratios spanning less than this factor between the bins' outer
# edges: no power (nothing to fit it on)
MIN_POINTS = 1000
MIN_SPAN = 1.25


def level_ratio(forecast, loc):  # noqa: ANN001, ANN201 - torch tensors
    """(B, H) each point's forecast over its series' support mean ``loc`` (B,) (raw units),
    clipped to ``RATIO_CLIP``; 1 where the support mean is not positive (a series around
    zero has no level to scale by)."""
    import torch

    m = loc[:, None]
    positive = m > 0
    r = forecast / torch.where(positive, m, torch.ones_like(m))
    return torch.where(positive, r.clamp(*RATIO_CLIP), torch.ones_like(r))


def level_factor(forecast, loc, power):  # noqa: ANN001, ANN201 - torch tensors
    """(B, H) the residual scale's multiplier of each point: its level ratio to ``power`` (a
    float, or a tensor that broadcasts against (B, H): each row its tail's power)."""
    return level_ratio(forecast, loc) ** power


def fit_level_power(abs_z: np.ndarray, ratio: np.ndarray, observed: np.ndarray) -> float | None:
    """The power of ``LEVEL_POWERS`` that makes the median of |z| / ratio**power most alike
    across ``LEVEL_BINS`` bins of the level ratio (the least spread of its log over the
    bins), from out-of-sample |z| (n, H), the points' level ratios and their mask. None when
    it is 0 or the sample cannot say (too few points, levels that barely vary)."""
    keep = observed & np.isfinite(abs_z) & np.isfinite(ratio) & (ratio > 0)
    z, lr = np.asarray(abs_z, dtype=np.float64)[keep], np.log(ratio[keep].astype(np.float64))
    if z.size < MIN_POINTS:
        return None
    edges = np.quantile(lr, np.linspace(0, 1, LEVEL_BINS + 1)[1:-1])
    if edges[-1] - edges[0] < np.log(MIN_SPAN):
        return None
    group = np.searchsorted(edges, lr)
    spreads = []
    for power in LEVEL_POWERS:
        scaled = z * np.exp(-power * lr)
        q = np.array([np.median(scaled[group == g]) for g in range(LEVEL_BINS)])
        spreads.append(float(np.std(np.log(np.maximum(q, 1e-12)))))
    best = LEVEL_POWERS[int(np.argmin(spreads))]
    return best or None
