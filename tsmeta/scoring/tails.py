"""The tail model of residual z-scores, fitted per cluster on out-of-sample calibration tasks.

z = residual / (per-series residual scale) is a scale mixture: the scale is estimated from
only K support points, so |z| has heavier tails than a normal (on clean synthetic data
its 99.9th percentile is ~5.8 where a normal gives 3.3). We fit a Student-t with scale
``c`` and ``dof`` to the 50th and 90th percentiles of |z| on calibration tasks (query
points the adaptation never saw): quantiles low enough that the anomalies of a training
window (a few % of points) do not move them, and then take tail probabilities from that t.

A t fitted to the body does not always place the far tail: on M4 Hourly it put the 1e-3
threshold where real clean data exceeded it 1e-4 of the time. So the calibration sample's
own two-sided tail is kept too (knots down to the probability that still has
``EMP_MIN_EXCEED`` points beyond it), and a point's tail probability is the smaller of the
two. Anomalies in the calibration windows can only raise the empirical tail, never lower
it, so where it is below the t's the t is too heavy for certain; where contamination makes
it the higher one, the t decides as before. Beyond the last knot the empirical tail is
continued with the t's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from tsmeta.scoring.tables import (
    _T,
    _TABLES_CACHED,
    _X,
    DOF_GRID,
    _empirical_knots,
    _floored_table,
    _interp_table,
    _knot_arrays,
    _knot_tail_surprise,
    _t_ppf,
    _torch_table,
)

# a sample with at least this share of exact zeros has its t fitted to the rest (fit_tail):
# near half, the median of all sits on the lowest nonzero values
ZERO_SHARE = 0.4


@dataclass(frozen=True)
class TailModel:
    scale: float  # |z| / scale is standard-t distributed
    dof: float  # math.inf means normal
    # the calibration sample's two-sided tail as knots (|z|, log P(|Z| > |z|)), |z| rising
    # (after the level and weekday factors); the tail probability is the smaller of the t's
    # and this.
    # None: the t alone (models calibrated before it existed load so)
    knots: tuple[tuple[float, float], ...] | None = None
    # sustained deviations: the tails of centred window medians of z and how the smallest of
    # the point's and the windows' tail probabilities is calibrated. None: the point alone
    windows: WindowTails | None = None
    # the seasonal-naive veto: knots (v, log P(V > v)), v rising, of V = -log max(p, q) on
    # the calibration sample, p being the tail probability above and q the normal tail of
    # the point's seasonal-naive deviation (TaskBatch.naive). None: no veto (models
    # calibrated before it existed load so)
    veto: tuple[tuple[float, float], ...] | None = None
    # the share of the points the model alone puts below COMBINE_AT that stay below it with
    # the veto (the veto's probability is multiplied by it: the rate the veto took away is
    # given back to the points it leaves). None: 1 (models calibrated before it existed)
    veto_factor: float | None = None
    # what the veto's deviations were divided by before their normal tail was taken when
    # it was fitted (``NAIVE_VETO_SCALE`` then), so that scoring takes the same tail.
    # None: 1 (models calibrated before it was stored)
    veto_scale: float | None = None
    # per weekday of the scored night (Monday first): the residual scale of that weekday's
    # nights relative to the typical one (a Monday adapted from a quieter Sunday misses
    # more); z is divided by it. None: one for every weekday
    weekday_scale: tuple[float, ...] | None = None
    # noise that grows with the level (counts, multiplicative errors): the residual scale
    # of a point is multiplied by its level ratio (``level_ratio``: the forecast over the
    # support's mean) to this power, fitted on the calibration sample (``fit_level_power``).
    # None: 0, one scale whatever the level (models calibrated before it existed load so)
    level_power: float | None = None

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "dof": None if math.isinf(self.dof) else self.dof,
            "knots": None if self.knots is None else [list(k) for k in self.knots],
            "windows": None if self.windows is None else self.windows.to_dict(),
            "veto": None if self.veto is None else [list(k) for k in self.veto],
            "veto_factor": self.veto_factor,
            "veto_scale": self.veto_scale,
            "weekday_scale": None if self.weekday_scale is None else list(self.weekday_scale),
            "level_power": self.level_power,
        }

    @classmethod
    def from_dict(cls, d: dict) -> TailModel:
        # a "step_scale" of models calibrated with per-step scales, and a "spread_floor" of
        # those whose residual scale was floored by the seasonal-difference spread (both
        # removed: they did not pay across families), are not read: such a model scores
        # with one scale for every step, unfloored, until it is retrained
        knots, windows, veto = (d.get(k) for k in ("knots", "windows", "veto"))
        return cls(
            float(d["scale"]),
            math.inf if d.get("dof") is None else float(d["dof"]),
            None if knots is None else tuple((float(a), float(b)) for a, b in knots),
            None if windows is None else WindowTails.from_dict(windows),
            None if veto is None else tuple((float(a), float(b)) for a, b in veto),
            None if d.get("veto_factor") is None else float(d["veto_factor"]),
            None if d.get("veto_scale") is None else float(d["veto_scale"]),
            None if d.get("weekday_scale") is None else tuple(float(x) for x in d["weekday_scale"]),
            None if d.get("level_power") is None else float(d["level_power"]),
        )

    @property
    def point(self) -> TailModel:
        """The tail of single points (this model without the window statistics and the
        veto, whose calibration is that of the whole)."""
        if self.windows is None and self.veto is None:
            return self
        return replace(self, windows=None, veto=None, veto_factor=None, veto_scale=None)

    def weekday(self, weekday: int) -> float:
        """The residual scale's factor for a night of ``weekday`` (Monday 0; 1 without one)."""
        return 1.0 if self.weekday_scale is None else self.weekday_scale[weekday]

    def threshold(self, false_alarm_rate: float) -> float:
        """|z| above which a point's tail probability is below the rate on its own (with
        window statistics, a point of a sustained deviation may be flagged inside it; with
        the veto, a point outside it that the seasonal-naive reference explains is not)."""
        if self.veto is not None:  # the model's own probability that the veto maps to the rate
            false_alarm_rate = math.exp(-_knot_tail_surprise(
                math.log(self.veto_factor or 1.0), self.veto, math.log(false_alarm_rate)))  # fmt: skip
        if self.windows is None:
            return self._point_threshold(false_alarm_rate)
        return self._point_threshold(math.exp(-self.windows.surprise_at(false_alarm_rate)))

    def _point_threshold(self, false_alarm_rate: float) -> float:
        thr_t = self.scale * _t_ppf(1 - false_alarm_rate / 2, self.dof)
        if self.knots is None:
            return thr_t
        kz, kp = _knot_arrays(self.knots)
        la = math.log(false_alarm_rate)
        if la >= kp[-1]:  # within the knots (kp falls: interpolate on -kp, which rises)
            thr_e = float(np.interp(-la, -kp, kz))
        else:  # on the t-shaped continuation beyond the last knot
            log_sf = _floored_table(self.dof)
            target = la - kp[-1] + float(np.interp(kz[-1] / self.scale, _X, log_sf))
            thr_e = self.scale * float(np.interp(target, log_sf[::-1], _X[::-1]))
        return min(thr_t, thr_e)


@dataclass(frozen=True)
class WindowTails:
    """Sustained deviations: for each width w of ``widths`` the tail of |S_w|, the median of
    the observed z of the centred window of w steps around a point times the square root of
    their count (``window_medians``: a shift of 2 z-units for 12 hours gives S_12 ~ 7 where no
    single point leaves the band). A point's tail probability is then that of m, the smallest of its own
    and its windows' tail probabilities, on the calibration sample: below the knots' reach
    ``factor * m`` (the smallest of several probabilities is below x about ``factor`` x as
    often as one is, 1 <= factor <= 1 + len(widths)), and the smaller of that and the
    sample's own tail of -log m (``knots``, as (u, log P(-log m > u)), u rising) within."""

    widths: tuple[int, ...]
    tails: tuple[TailModel, ...]
    factor: float
    knots: tuple[tuple[float, float], ...] | None = None
    # the tail of |isolation(z) * rel| (a point's jump away from both neighbours, in units
    # of the series' own jumps), a member of the smallest. None: not one (models
    # calibrated before it existed load so, and so do callers that pass no ``rel``)
    isolation: TailModel | None = None
    # the tail of |onset(z) * rel| (how abruptly a point's side of the series left the
    # other: the first or last points of a level shift, in the same units), a member of
    # the smallest. None: not one (models calibrated before it existed load so)
    onset: TailModel | None = None

    def to_dict(self) -> dict:
        return {
            "widths": list(self.widths),
            "tails": [t.to_dict() for t in self.tails],
            "factor": self.factor,
            "knots": None if self.knots is None else [list(k) for k in self.knots],
            "isolation": None if self.isolation is None else self.isolation.to_dict(),
            "onset": None if self.onset is None else self.onset.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> WindowTails:
        knots, iso, ons = d.get("knots"), d.get("isolation"), d.get("onset")
        return cls(
            tuple(int(w) for w in d["widths"]),
            tuple(TailModel.from_dict(t) for t in d["tails"]),
            float(d["factor"]),
            None if knots is None else tuple((float(a), float(b)) for a, b in knots),
            None if iso is None else TailModel.from_dict(iso),
            None if ons is None else TailModel.from_dict(ons),
        )

    def surprise_at(self, false_alarm_rate: float) -> float:
        """u = -log m at which the calibrated tail probability reaches the rate."""
        return _knot_tail_surprise(math.log(self.factor), self.knots, math.log(false_alarm_rate))


def weekday_of(night_step, steps_per_day: int):  # noqa: ANN001, ANN201 - int or int array/tensor
    """Weekday (Monday 0) of the day holding global grid step ``night_step`` (step 0 is
    1970-01-01 00:00 UTC, a Thursday)."""
    return (night_step // steps_per_day + 3) % 7


def fit_weekday_scale(
    abs_z: np.ndarray, observed: np.ndarray, weekday: np.ndarray, min_points: int = 500,
    clip: float = 4.0,
) -> tuple[float, ...] | None:  # fmt: skip
    """Per-weekday residual scale from out-of-sample |z| (n, H), its mask and each task's
    night's weekday (n,): the median over that weekday's points over the median of all,
    clipped to [1/clip, clip]; weekdays with fewer than ``min_points`` points get 1. None
    when there is too little data to say."""
    z = np.where(observed, np.asarray(abs_z, dtype=np.float64), np.nan)
    z[~np.isfinite(z)] = np.nan
    if not np.isfinite(z).any():
        return None
    overall = np.nanmedian(z)
    if not overall > 0:
        return None
    out = []
    for d in range(7):
        cell = z[weekday == d]
        cell = cell[np.isfinite(cell)]
        out.append(float(np.median(cell)) / overall if cell.size >= min_points else 1.0)
    return tuple(float(x) for x in np.clip(out, 1.0 / clip, clip))


def fit_tail(abs_z: np.ndarray, empirical: bool = True) -> TailModel:
    """Fit (scale, dof) to the 50th and 90th percentiles of |z| (finite values only), and,
    with ``empirical``, keep the sample's own tail as knots where it has enough points."""
    z = np.asarray(abs_z, dtype=np.float64)
    z = z[np.isfinite(z)]
    if z.size < 20:
        return TailModel(1.0, math.inf)
    # a sample with many exact zeros (``isolation``: every slope and step is 0, about half
    # the points): the t is fitted to the nonzero values, so it is heavier than the whole
    # sample's tail (by the inverse of their share) and the knots, of the whole sample,
    # place the tail. (Fitted through a median that zeros pull to nearly 0, the t would put
    # most points in its far tail: with zeros just under half of M4's calibration points,
    # the nightly tails flagged 3% of clean points at 1e-3.)
    body = z if np.mean(z == 0) < ZERO_SHARE else z[z > 0]
    if body.size < 20:
        return TailModel(max(float(np.quantile(z, 0.9)), 1e-6) / _t_ppf(0.95, math.inf), math.inf)
    q50, q90 = np.quantile(body, [0.5, 0.9])
    ratio = q90 / q50
    # |z| quantiles 0.5 / 0.9 are the t's 0.75 / 0.95 quantiles
    best = min(DOF_GRID, key=lambda d: abs(_t_ppf(0.95, d) / _t_ppf(0.75, d) - ratio))
    tail = TailModel(float(q50 / _t_ppf(0.75, best)), best)
    knots = _empirical_knots(z) if empirical else None
    return tail if knots is None else replace(tail, knots=knots)


def _exact_log_tail(u: np.ndarray, tail: TailModel) -> np.ndarray:
    """log P(|Z| > u) of single points, u >= 0: the smaller of the t's and the knots' (with
    the t's shape beyond the last knot), each interpolated on its own grid."""
    log_sf = _floored_table(tail.dof)
    t_part = np.interp(u / tail.scale, _X, log_sf)
    out = np.minimum(0.0, math.log(2.0) + t_part)
    if tail.knots is None:
        return out
    kz, kp = _knot_arrays(tail.knots)
    emp = np.interp(u, kz, kp)
    cont = kp[-1] + t_part - np.interp(kz[-1] / tail.scale, _X, log_sf)
    return np.minimum(out, np.where(u > kz[-1], cont, emp))


@lru_cache(maxsize=_TABLES_CACHED)
def _point_table(tail: TailModel) -> np.ndarray:
    """log P(|Z| > x) of the point tail ``tail`` (no windows) at every node x of ``_T``.

    Scoring interpolates this one table instead of composing the t's table, the knots and
    their minimum per point (a quarter of `score_day`'s time went there, in a profile of it alone): the
    same function at the nodes, linear between them (cells 0.01 wide up to |z| = 50). It
    departs from the composition by up to 5e-4 in log p inside the cells around the knots,
    by 5e-5 or less at 99% of points. |z| beyond the grid's end (1e6) reads as 1e6."""
    return _exact_log_tail(_T, tail)


def log_tail(abs_z: np.ndarray, tail: TailModel) -> np.ndarray:
    """log P(|Z| > |z|) under the tail model's single points (float64; windows ignored)."""
    u = np.abs(np.asarray(abs_z, dtype=np.float64))
    return np.interp(u, _T, _point_table(tail.point))


def two_sided_tail(abs_z, tail: TailModel):  # noqa: ANN001, ANN201 - ndarray or Tensor
    """P(|Z| > |z|): the smaller of the t's two-sided tail P(|T| > |z| / scale) and the
    calibration sample's own (the knots, where the model has them); 1 minus the score.

    A numpy array gives a numpy array; a torch tensor gives a float64 tensor on its device
    (the same interpolation of the same table, so nightly scoring on a GPU never brings the
    z-scores back to the host to score them).
    """
    import torch

    if isinstance(abs_z, torch.Tensor):
        return _two_sided_tail_torch(abs_z, tail)
    return np.exp(log_tail(abs_z, tail))


def _two_sided_tail_torch(abs_z, tail: TailModel):  # noqa: ANN001, ANN202
    import torch

    return torch.exp(_log_tail_torch(abs_z, tail))


def _log_tail_torch(abs_z, tail: TailModel):  # noqa: ANN001, ANN202
    """log P(|Z| > |z|) of single points (torch, float64): ``log_tail`` on a device."""
    import torch

    point = tail.point
    cells = _torch_table(point, _point_table, abs_z.device)
    return _interp_table(abs_z.to(torch.float64).abs(), cells)
