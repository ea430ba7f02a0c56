"""Tail tables: the standard Student-t survival function on a fixed grid of |z|, the
knots of a sample's own tail, and their interpolation (numpy for fitting, torch for scoring).

Pure numpy for fitting the point tail (and the same interpolation in torch for scoring on
a device). Scoring reads each tail from one table over a fixed grid of |z|
(``tails._point_table``, ``combine._combined_table``: the composition of the t, the knots
and their minimum, tabulated once per model and cached).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

EMP_MIN_EXCEED = 30  # the empirical tail reaches the probability with this many points beyond
EMP_KNOTS = 40  # knots of the empirical tail, geometric in probability from 0.5 down

DOF_GRID = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, math.inf)
_LIN_END, _LIN_N, _GEO_N = 50.0, 50_000, 20_000  # the grid: linear to 50, then geometric
_X = np.concatenate([np.linspace(0.0, _LIN_END, _LIN_N + 1),
                     np.geomspace(_LIN_END, 1e6, _GEO_N + 1)[1:]])  # fmt: skip
# the coarser grid of the scoring tables (``_point_table``, ``_combined_table``,
# ``_veto_table``): the same two pieces, 10x fewer nodes, so that every table of every
# cluster model of a night stays cached (a night interleaves the clusters in every chunk
# it reads; 32 clusters hold about 320 tables, 72 MB as torch cells)
_T_LIN_N, _T_GEO_N = 5_000, 2_000
_T = np.concatenate([np.linspace(0.0, _LIN_END, _T_LIN_N + 1),
                     np.geomspace(_LIN_END, 1e6, _T_GEO_N + 1)[1:]])  # fmt: skip
_T_LIN_STEP, _T_GEO_LOG_STEP = _LIN_END / _T_LIN_N, math.log(1e6 / _LIN_END) / _T_GEO_N
_TABLES_CACHED = 1024  # tables kept per kind (numpy) and in all (torch)


@lru_cache(maxsize=len(DOF_GRID))
def _sf_table(dof: float) -> np.ndarray:
    """log survival function of the standard Student-t on the grid ``_X``."""
    if math.isinf(dof):
        from math import erfc, sqrt

        sf = np.array([0.5 * erfc(x / sqrt(2)) for x in _X[_X < 40]])
        out = np.full(_X.shape, -np.inf)
        out[: len(sf)] = np.log(np.maximum(sf, 1e-300))
        return out
    logc = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    pdf = np.exp(logc - (dof + 1) / 2 * np.log1p(_X**2 / dof))
    # analytic tail beyond the grid: pdf ~ C x^-(dof+1)  =>  integral = C' x^-dof / dof
    x_end = _X[-1]
    tail_end = math.exp(logc + (dof + 1) / 2 * math.log(dof)) * x_end**-dof / dof
    seg = 0.5 * (pdf[1:] + pdf[:-1]) * np.diff(_X)
    sf = tail_end + np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])
    return np.log(np.maximum(sf, 1e-300))


def t_sf(x: np.ndarray, dof: float) -> np.ndarray:
    """Survival function P(T > x) of the standard Student-t for x >= 0 (inf dof: normal)."""
    return np.exp(np.interp(np.abs(x), _X, _sf_table(dof)))


def _t_ppf(q: float, dof: float) -> float:
    """Quantile of the standard t for q in (0.5, 1) by inverting the table."""
    log_sf = _sf_table(dof)
    return float(np.interp(math.log(1 - q), log_sf[::-1], _X[::-1]))


def _knot_tail_table(
    log_factor: float, knots: tuple[tuple[float, float], ...] | None
) -> np.ndarray:
    """At every node u of ``_T``: the smaller of ``log_factor - u`` and, with knots (u,
    log P(U > u)), the sample's own tail, continued with slope -1 beyond the last knot;
    never above 0. The calibration of both the windows' combination and the veto."""
    out = log_factor - _T
    if knots is not None:
        ku, kp = _knot_arrays(knots)
        out = np.minimum(out, np.where(_T > ku[-1], kp[-1] - (_T - ku[-1]), np.interp(_T, ku, kp)))
    return np.minimum(out, 0.0)


def _knot_tail_surprise(
    log_factor: float, knots: tuple[tuple[float, float], ...] | None, log_rate: float
) -> float:
    """The u at which ``_knot_tail_table(log_factor, knots)`` reaches ``log_rate``."""
    u = log_factor - log_rate
    if knots is not None:
        ku, kp = _knot_arrays(knots)
        emp = (
            float(np.interp(-log_rate, -kp, ku))
            if log_rate >= kp[-1]
            else ku[-1] + kp[-1] - log_rate
        )
        u = min(u, emp)
    return max(u, 0.0)


def _empirical_knots(sample: np.ndarray) -> tuple[tuple[float, float], ...] | None:
    """The sample's own tail as knots (x, log P(X > x)), x rising, down to the probability
    that still has ``EMP_MIN_EXCEED`` points beyond it; None when the sample is too small
    for its tail to say more than a fitted shape."""
    p_min = EMP_MIN_EXCEED / sample.size
    if p_min >= 0.05:
        return None
    probs = np.geomspace(0.5, p_min, EMP_KNOTS)
    kx = np.maximum.accumulate(np.quantile(sample, 1.0 - probs))
    return ((0.0, 0.0),) + tuple(
        (float(a), float(b)) for a, b in zip(kx, np.log(probs), strict=True)
    )


def _knot_arrays(knots: tuple[tuple[float, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(knots, dtype=np.float64)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])


def _floored_table(dof: float) -> np.ndarray:
    # a finite floor: interpolating between -inf knots gives NaN in torch (exp of either is 0)
    return np.maximum(_sf_table(dof), -1e4)


_TORCH_TABLES: dict = {}


def _torch_table(key, make, device):  # noqa: ANN001, ANN202
    """The table ``make(key)`` over ``_T`` as ``_interp_table`` reads it, on ``device``,
    cached under ``key`` (about ten tables per cluster model; emptied past
    ``_TABLES_CACHED`` of them)."""
    import torch

    key = (key, str(device))
    if key not in _TORCH_TABLES:
        if len(_TORCH_TABLES) >= _TABLES_CACHED:
            _TORCH_TABLES.clear()
        x = torch.as_tensor(_T, dtype=torch.float64, device=device)
        y = torch.as_tensor(make(key[0]), dtype=torch.float64, device=device)
        # cell i as one row (x_i, y_i, x_i+1, y_i+1): one gather fetches all four
        _TORCH_TABLES[key] = torch.stack([x[:-1], y[:-1], x[1:], y[1:]], 1).contiguous()
    return _TORCH_TABLES[key]


def _interp_table(q, cells):  # noqa: ANN001, ANN202
    """``np.interp(q, _T, y)`` in torch, ``cells`` being y's table from ``_torch_table``,
    without a binary search: a point's cell follows from the grid's two arithmetic pieces
    (linear steps of ``_T_LIN_STEP`` up to ``_LIN_END``, then geometric ones), and its
    weight is clamped to the cell, so where rounding puts a point next to a node into the
    neighbouring cell it takes the node's value (the same to within 1e-15)."""
    import torch

    qc = q.clamp(0.0, float(_T[-1]))
    lin = (qc * (1.0 / _T_LIN_STEP)).floor_()
    geo = (torch.log(qc.clamp_min(_LIN_END) * (1.0 / _LIN_END)) * (1.0 / _T_GEO_LOG_STEP)).floor_()
    i = torch.where(qc < _LIN_END, lin, geo.add_(_T_LIN_N)).long().clamp_(0, len(cells) - 1)
    x0, y0, x1, y1 = cells.index_select(0, i.reshape(-1)).view(*i.shape, 4).unbind(-1)
    w = ((qc - x0) / (x1 - x0)).clamp_(0.0, 1.0)
    return y0 + w * (y1 - y0)
