"""Residual calibration: a Student-t tail fitted per cluster on out-of-sample z-scores.

z = residual / (per-series residual scale) is a scale mixture: the scale is estimated from
only K support points, so |z| has heavier tails than a normal (on clean synthetic data
its 99.9th percentile is ~5.8 where a normal gives 3.3). We fit a Student-t with scale
``c`` and ``dof`` to the 50th and 90th percentiles of |z| on calibration tasks (query
points the adaptation never saw): low enough quantiles that the anomalies of a training window (a few % of points) do not move them,
and then take tail probabilities from that t.

A t fitted to the body does not always place the far tail: on M4 Hourly it put the 1e-3
threshold where real clean data exceeded it 1e-4 of the time. So the calibration sample's
own two-sided tail is kept too (knots down to the probability that still has
``EMP_MIN_EXCEED`` points beyond it), and a point's tail probability is the smaller of the
two. Anomalies in the calibration windows can only raise the empirical tail, never lower
it, so where it is below the t's the t is too heavy for certain; where contamination makes
it the higher one, the t decides as before. Beyond the last knot the empirical tail is
continued with the t's shape.

Single points miss what is sustained: a level shift of 2 z-units for twelve hours leaves
every point inside the band. ``WindowTails`` adds, per point, the median z of the centred
windows of ``WINDOWS`` steps around it (times the square root of their count), each with
its own tail fitted on the same calibration sample, and calibrates the smallest of the
point's and its windows' tail probabilities on that sample too, so the flag rate on clean
data stays the configured one. Medians: one spike never flags its neighbours.

Forecast errors are smooth in time: when a forecast is off, it is off for hours, so on M4
Hourly the clean test hours hold single points 10-20 z-units out, and a spike of 4-8
spreads hides among them. What a spike has and a forecast miss has not is a jump away
from both neighbours. ``isolation`` measures it (the smaller of a point's two jumps when
both go the same way, zero otherwise: a neighbour of a spike, or a step, jumps one way
only), in units of the series' own jumps (the support residuals' local contrast, ``rel``;
``tsmeta.meta.train.contrast_sigma``), and ``WindowTails.isolation`` is its tail, one more
member of the calibrated smallest (with the point and its two windows).

A level shift is sustained, but so is a forecast miss. What a shift has and a drift has
not is an abrupt start and end: ``onset`` compares the level two neighbouring points agree
on with the level of the two beside them (the smaller of two same-signed deviations, so
one spike is no level), in the same units as isolation; its tail is one more member of
the calibrated smallest (``WindowTails.onset``).

A forecast can miss what the series itself repeated: the model mispredicts a day that
is the same as the day before (or, for hourly models of a daily period, as the week
before: ``FeatureSpec.veto_lag``). The seasonal-naive veto (``TailModel.veto``) takes the
larger of the model's tail probability and the normal tail of the point's deviation from
the nearer reference, in units of the spread of the support's differences at that lag
(``TaskBatch.naive``), so such a point is not flagged however badly it was forecast, and
recalibrates the result on the same sample (only ever lowering it: the points the veto
leaves get back the rate it took away, by the share of extreme points it left at
``COMBINE_AT``, ``TailModel.veto_factor``, and by the sample's own tail where that is
lower). A real spike, dip or shift is far from both references and keeps its probability.

Pure numpy for fitting the point tail (and the same interpolation in torch for scoring on
a device; the window statistics are torch throughout). Scoring reads each tail from one
table over a fixed grid of |z| (``_point_table``, ``_combined_table``: the composition of
the t, the knots and their minimum, tabulated once per model and cached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache, lru_cache

import numpy as np

__all__ = ["TailModel", "WindowTails", "fit_tail", "fit_step_scale", "fit_weekday_scale", "weekday_of",
           "fit_windows", "fit_veto",
           "two_sided_tail", "tail_probability", "naive_log_tail", "window_medians", "lower_median",
           "isolation", "neighbours", "onset", "t_sf", "EMP_MIN_EXCEED", "WINDOWS"]  # fmt: skip

EMP_MIN_EXCEED = 30  # the empirical tail reaches the probability with this many points beyond
EMP_KNOTS = 40  # knots of the empirical tail, geometric in probability from 0.5 down
# widths of the centred windows whose median z reveals a sustained deviation (a level shift,
# a stuck value, a changed season) whose single points stay inside the band
WINDOWS = (5, 12)
# the seasonal-naive veto's deviations are divided by this before their normal tail is
# taken: smaller, a weaker veto (stored with each fit: ``TailModel.veto_scale``). Since the
# forecaster reads the week before (``FeatureSpec.second_lag``) it misses less of what the
# series repeated, and a strong veto lifts injected spikes and dips that land near a
# reference: 1, 0.71 and 0.5 gave M4's injected anomalies F1 / PR-AUC 0.337 / 0.436,
# 0.378 / 0.443, 0.379 / 0.442 and the generator's 0.567 / 0.400, 0.561 / 0.414, 0.532 /
# 0.414 (2026-12-04; before the week input 1 was best on M4: benchmarks/README.md)
NAIVE_VETO_SCALE = 0.71
VETO_FACTOR_MIN = 0.05  # the veto's factor is never below this (fit_veto)
COMBINE_AT = 0.05  # where the factor of the smallest-of-several tail probabilities is read (high
# enough that anomalies in the calibration windows, a percent or so of points, barely move it)

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


@dataclass(frozen=True)
class TailModel:
    scale: float  # |z| / scale is standard-t distributed
    dof: float  # math.inf means normal
    # per forecast step h: the residual scale at h relative to the typical one (errors grow
    # with the horizon); z at step h is divided by it before the tail applies. None: flat.
    step_scale: tuple[float, ...] | None = None
    # the calibration sample's two-sided tail as knots (|z|, log P(|Z| > |z|)), |z| rising
    # (after the step scale); the tail probability is the smaller of the t's and this.
    # None: the t alone (models calibrated before it existed load so)
    knots: tuple[tuple[float, float], ...] | None = None
    # sustained deviations: the tails of centred window medians of z and how the smallest of
    # the point's and the windows' tail probabilities is calibrated. None: the point alone
    windows: WindowTails | None = None
    # a series' residual scale is at least spread_floor times the robust spread of its
    # support's seasonal differences (TaskBatch.spread; see ``residual_sigma``). None: the
    # support residuals alone (models calibrated before it existed load so)
    spread_floor: float | None = None
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
    # more); z is divided by it, as by the step scale. None: one for every weekday
    weekday_scale: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "dof": None if math.isinf(self.dof) else self.dof,
            "step_scale": None if self.step_scale is None else list(self.step_scale),
            "knots": None if self.knots is None else [list(k) for k in self.knots],
            "windows": None if self.windows is None else self.windows.to_dict(),
            "spread_floor": self.spread_floor,
            "veto": None if self.veto is None else [list(k) for k in self.veto],
            "veto_factor": self.veto_factor,
            "veto_scale": self.veto_scale,
            "weekday_scale": None if self.weekday_scale is None else list(self.weekday_scale),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TailModel:
        steps, knots, windows, veto = (d.get(k) for k in ("step_scale", "knots", "windows", "veto"))
        return cls(
            float(d["scale"]),
            math.inf if d.get("dof") is None else float(d["dof"]),
            None if steps is None else tuple(float(x) for x in steps),
            None if knots is None else tuple((float(a), float(b)) for a, b in knots),
            None if windows is None else WindowTails.from_dict(windows),
            None if d.get("spread_floor") is None else float(d["spread_floor"]),
            None if veto is None else tuple((float(a), float(b)) for a, b in veto),
            None if d.get("veto_factor") is None else float(d["veto_factor"]),
            None if d.get("veto_scale") is None else float(d["veto_scale"]),
            None if d.get("weekday_scale") is None else tuple(float(x) for x in d["weekday_scale"]),
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

    def steps(self, horizon: int) -> np.ndarray:
        """(horizon,) multipliers of the residual scale per forecast step (ones when flat)."""
        if self.step_scale is None:
            return np.ones(horizon)
        if len(self.step_scale) != horizon:
            raise ValueError(
                f"the tail model was calibrated for {len(self.step_scale)} forecast steps, "
                f"not {horizon}; retrain the cluster's model with this horizon"
            )
        return np.asarray(self.step_scale, dtype=np.float64)

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


def window_medians(z, observed, width: int, causal: bool = False):  # noqa: ANN001, ANN201
    """(B, H) float64: for each observed point, the median of the observed z (B, H, signed) of
    the centred window of ``width`` steps around it (``causal``: the ``width`` steps ending
    at it, so no later point is read) (cut at the horizon's ends) times the
    square root of their count; 0 where the point itself is unobserved. A median, so that
    one spike never lends its size to its neighbours: a window is extreme only when most of
    its points deviate the same way (a level shift, a stuck value, a changed season). Of an
    even count, the lower of the two middle values.

    Every window is sorted at once by a sorting network (``_sorting_network``): elementwise
    minima and maxima of whole time-major columns, about twice as fast on the CPU as
    ``torch.nanmedian`` over the unfolded windows, and exactly the same values (a median
    is a selection, so it is taken in z's own precision)."""
    import torch

    H = z.shape[1]
    w = min(int(width), H)
    obs = observed.to(torch.bool)
    left, right = (w - 1, 0) if causal else (w // 2, w - 1 - w // 2)
    inf = torch.full((), float("inf"), dtype=z.dtype, device=z.device)
    # time-major (H + w - 1, B): every window position is a contiguous slice of rows;
    # unobserved points and the padding are +inf, sorted past every observed value
    x = torch.nn.functional.pad(torch.where(obs, z, inf).T, (0, 0, left, right), value=float("inf"))
    o = torch.nn.functional.pad(obs.T.to(torch.int32), (0, 0, left, right))
    count = sum(o[k : k + H] for k in range(w))  # (H, B) observed points of each window
    med = lower_median([x[k : k + H] for k in range(w)], count)
    out = med.to(torch.float64) * count.to(torch.float64).sqrt()
    return torch.where(obs.T, out, torch.zeros((), dtype=torch.float64, device=z.device)).T


def lower_median(cols, count):  # noqa: ANN001, ANN201 - torch tensors
    """Elementwise lower median of the first ``count`` (integer tensor) of the values of
    ``cols`` (a list of same-shape tensors) in sorted order, where the values left out
    (unobserved, padding) are +inf and so sort last: sorted by a sorting network
    (``_sorting_network``: elementwise minima and maxima, no per-row sort), then picked by
    rank. A selection, so in the values' own precision; the smallest where count is 0."""
    import torch

    cols = list(cols)
    for i, j in _sorting_network(len(cols)):
        cols[i], cols[j] = torch.minimum(cols[i], cols[j]), torch.maximum(cols[i], cols[j])
    rank = ((count - 1).clamp_min(0) // 2).to(torch.int64)
    return torch.stack(cols).gather(0, rank[None]).squeeze(0)


def neighbours(x):  # noqa: ANN001, ANN201 - a torch tensor
    """(before, after), each (B, N) like x (B, N): every point's previous and next value
    along the last axis, NaN past either end (and wherever x itself is NaN)."""
    import torch

    nan = torch.full((x.shape[0], 1), float("nan"), dtype=x.dtype, device=x.device)
    return torch.cat([nan, x[:, :-1]], 1), torch.cat([x[:, 1:], nan], 1)


def isolation(z, observed):  # noqa: ANN001, ANN201 - torch tensors
    """(B, H) float64: how far each observed point of z (B, H, signed) jumps away from both
    its observed neighbours: the smaller of z_t - z_(t-1) and z_t - z_(t+1) when both have
    the same sign (a peak or a trough), with that sign; 0 when they differ (a slope, a
    step: one side follows the point) or the point is unobserved. With one observed
    neighbour (the horizon's ends, gaps) its jump alone; with none, 0.

    A spike's neighbours jump one way only (towards it) and score 0: one spike never
    flags its neighbours."""
    import torch

    x = torch.where(observed.to(torch.bool), z.to(torch.float64), float("nan"))
    before, after = neighbours(x)
    a, b = x - before, x - after  # the jumps from the point before and from the one after
    a, b = torch.where(a.isnan(), b, a), torch.where(b.isnan(), a, b)
    out = torch.where(a.sign() == b.sign(), a.sign() * torch.minimum(a.abs(), b.abs()), 0.0)
    return torch.nan_to_num(out, nan=0.0)


def _pair(a, b):  # noqa: ANN001, ANN202 - torch tensors
    """Elementwise, what two neighbouring points agree on: the one nearer zero when both
    deviate the same way, 0 when they go opposite ways (one point alone is no level), the
    one observed where the other is NaN, NaN where neither is."""
    import torch

    near = torch.where(a.abs() < b.abs(), a, b)
    both = torch.where(a.sign() == b.sign(), near, torch.zeros((), dtype=a.dtype, device=a.device))
    return torch.where(a.isnan(), b, torch.where(b.isnan(), a, both))


def onset(z, observed):  # noqa: ANN001, ANN201 - torch tensors
    """(B, H) float64: how abruptly each observed point's side of the series (B, H, signed
    z) left the other side: the level of the point and the next against that of the two
    before (where the point's side is the farther from the forecast), or the level of the
    point and the one before against that of the two after, whichever is larger; signed by
    the point's side. A level is what two neighbouring points agree on (``_pair``: the
    smaller when both deviate the same way, else 0), so one spike is no level and never
    makes its neighbours an onset; 0 where a side has no observed point.

    A level shift's first two and last two points score its size (a level straddling its
    edge is the series' own); a forecast that drifts away from the series over hours
    scores little at any point (its levels change gradually)."""
    import torch

    H = z.shape[1]
    x = torch.where(observed.to(torch.bool), z, float("nan"))  # in z's own precision
    xp = torch.nn.functional.pad(x, (2, 2), value=float("nan"))  # xp[:, j] = x[:, j - 2]
    level = _pair(xp[:, :-1], xp[:, 1:])  # (B, H + 3): level[:, j] of x[j - 2], x[j - 1]
    zero = torch.zeros((), dtype=x.dtype, device=x.device)

    def edge(side, other):  # noqa: ANN001, ANN202
        d = torch.where(side.abs() > other.abs(), side - other, zero)
        return torch.nan_to_num(d, nan=0.0)  # NaN: a side with no observed point

    into = edge(level[:, 2 : H + 2], level[:, :H])  # (x_t, x_t+1) against (x_t-2, x_t-1)
    out_of = edge(level[:, 1 : H + 1], level[:, 3 : H + 3])  # (x_t-1, x_t) against (x_t+1, x_t+2)
    out = torch.where(into.abs() >= out_of.abs(), into, out_of)
    return torch.where(x.isnan(), zero, out).to(torch.float64)


@cache
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort of n inputs: applying
    (min, max) to each pair in turn sorts any n values. Built for the next power of two;
    comparators reaching past n are dropped (as if the extra inputs were +inf, which no
    comparator ever moves)."""
    size = 1
    while size < n:
        size *= 2
    out: list[tuple[int, int]] = []

    def merge(lo: int, length: int, r: int) -> None:
        step = 2 * r
        if step < length:
            merge(lo, length, step)
            merge(lo + r, length, step)
            out.extend((i, i + r) for i in range(lo + r, lo + length - r, step))
        else:
            out.append((lo, lo + r))

    def sort(lo: int, length: int) -> None:
        if length > 1:
            half = length // 2
            sort(lo, half)
            sort(lo + half, half)
            merge(lo, length, 1)

    sort(0, size)
    return tuple((i, j) for i, j in out if j < n)


def _smallest_log_tail(z, observed, tail: TailModel, rel=None, causal=False):  # noqa: ANN001, ANN202
    """log of the smallest of the point's, its windows' and (with ``rel`` and a fitted
    tail) its isolation's and onset's tail probabilities (torch). ``causal``: trailing
    windows, and no isolation or onset (both read the next points)."""
    import torch

    m = _log_tail_torch(z.abs(), tail)
    for width, wt in zip(tail.windows.widths, tail.windows.tails, strict=True):
        m = torch.minimum(m, _log_tail_torch(window_medians(z, observed, width, causal).abs(), wt))
    if rel is None or causal:
        return m
    unit = rel.to(torch.float64)[:, None]  # both jump statistics in the series' own jumps
    for statistic, jump_tail in ((isolation, tail.windows.isolation), (onset, tail.windows.onset)):
        if jump_tail is not None:
            m = torch.minimum(m, _log_tail_torch((statistic(z, observed) * unit).abs(), jump_tail))
    return m


def tail_probability(z, observed, tail: TailModel, naive=None, rel=None, causal=False):  # noqa: ANN001, ANN201 - torch tensors
    """Two-sided tail probability (float64, on z's device) of every point of signed z-scores
    (B, H) whose observed points are ``observed``: the point's own tail, or with window
    statistics the calibrated smallest of its own, its windows' and (``rel`` (B,): each
    series' residual scale over its ``contrast_sigma``) its isolation's; with the veto (and
    ``naive``, the points' seasonal-naive deviations, ``TaskBatch.naive``) the calibrated
    larger of that and the naive deviation's normal tail. 1 minus the score. Without
    ``rel`` a model with an isolation tail scores as if no point were isolated (a
    little below its rate: the combination was calibrated with it). ``causal``: each
    point's probability reads no later point (trailing windows; no isolation, no onset;
    the same tables, so a little below the rate where those flagged points)."""
    import torch

    log_p = _model_log_tail(z, observed, tail, rel, causal)
    if tail.veto is None or naive is None:
        return torch.exp(log_p)
    v = -torch.maximum(log_p, naive_log_tail(naive, tail.veto_scale or 1.0))
    key = (tail.veto, tail.veto_factor or 1.0)
    return torch.exp(_interp_table(v, _torch_table(key, _veto_table, v.device)))


def _model_log_tail(z, observed, tail: TailModel, rel=None, causal=False):  # noqa: ANN001, ANN202
    """log of ``tail_probability`` without the veto."""
    if tail.windows is None:
        return _log_tail_torch(z.abs(), tail)
    u = -_smallest_log_tail(z, observed, tail, rel, causal)
    return _interp_table(u, _torch_table(tail.windows, _combined_table, u.device))


def naive_log_tail(naive, scale: float = 1.0):  # noqa: ANN001, ANN201 - a torch tensor
    """log of the two-sided normal tail of seasonal-naive deviations divided by ``scale``
    (float64; -inf where the deviation is infinite: no reference, no veto).

    Deliberately light: a normal tail is far below the real one, so the veto lifts only
    points close to what the series did one period before (a forecast miss the naive
    reference explains), never a real spike, dip or shift."""
    import torch

    a = naive.to(torch.float64).abs() / scale
    return math.log(2.0) + torch.special.log_ndtr(-a)


def fit_veto(
    log_p, naive, observed, fit=None, scale: float = 1.0
) -> tuple[tuple[tuple[float, float], ...] | None, float]:  # noqa: ANN001
    """The veto's knots and factor from the calibration sample: the model's log tail
    probabilities (B, H), the points' seasonal-naive deviations and their mask (torch
    tensors). The knots are None when the sample is too small to place the configured
    rates; the factor is the share of the points with p < ``COMBINE_AT`` that keep
    max(p, q) below it (1 when there are none; at least ``VETO_FACTOR_MIN``). ``fit``: the
    observed points to fit on (default all; ``tsmeta.meta.train.calibrate`` leaves out
    the sample's own anomalies). ``scale``: ``naive_log_tail``'s, stored with the fit
    (``TailModel.veto_scale``)."""
    import torch

    obs = observed.to(torch.bool)
    if fit is not None:
        obs = obs & fit.to(torch.bool)
    # finite: a probability that underflowed with no naive reference would be +inf here
    v = (-torch.maximum(log_p, naive_log_tail(naive, scale))).clamp(max=1e4)[obs]
    u = -math.log(COMBINE_AT)
    below = int((-log_p[obs] > u).sum())
    factor = int((v > u).sum()) / below if below else 1.0
    return _empirical_knots(v.cpu().numpy()), max(factor, VETO_FACTOR_MIN)


@lru_cache(maxsize=_TABLES_CACHED)
def _veto_table(key: tuple[tuple[tuple[float, float], ...], float]) -> np.ndarray:
    """The veto's calibrated log tail probability at every node v of ``_T``: the smaller of
    log(factor) - v and the sample's own tail (``_knot_tail_table``); key (knots, factor).

    V = -log max(p, q) is never above the model's own -log p, whose tail is calibrated:
    P(V > v) <= exp(-v), and on clean data about factor * exp(-v): the veto lifts that
    share of the model's extreme points, and the factor, read at ``COMBINE_AT`` where
    the calibration windows' anomalies are a small part of the points, gives the points
    it leaves back the rate it took away. The sample's own tail deep down is raised by
    those anomalies (there it is above, and the factor decides); where it is below, it
    decides."""
    knots, factor = key
    return _knot_tail_table(math.log(factor), knots)


@lru_cache(maxsize=_TABLES_CACHED)
def _combined_table(wt: WindowTails) -> np.ndarray:
    """The calibrated log tail probability of the smallest of a point's and its windows'
    tail probabilities, at every node u = -log(smallest) of ``_T``: ``log(factor) - u``,
    or below it the calibration sample's own tail (``_knot_tail_table``)."""
    return _knot_tail_table(math.log(wt.factor), wt.knots)


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


def fit_windows(
    z,
    observed,
    point: TailModel,
    widths: tuple[int, ...] = WINDOWS,
    rel=None,
    fit=None,
    isolated: bool = True,
    onsets: bool = True,
) -> WindowTails | None:  # noqa: ANN001 - torch tensors
    """The window statistics' tails and their combination with the point tail ``point``,
    from out-of-sample signed z (B, H) (already divided by the per-step scales) and their
    mask; with ``rel`` (B,) (each task's residual scale over its ``contrast_sigma``) the
    isolation's tail too (``isolated``), and the onset's (``onsets``). None when the sample
    is too small to say. ``fit``: the observed points whose statistics the tails are
    fitted on (default all); the statistics themselves are always those of every observed
    point, as scoring computes them."""
    import torch

    obs = observed.to(torch.bool)
    keep = obs if fit is None else fit.to(torch.bool) & obs
    if int(keep.sum()) < 1000:
        return None
    widths = tuple(sorted({min(int(w), z.shape[1]) for w in widths} - {1}))
    if not widths:
        return None
    tails = tuple(fit_tail(window_medians(z, obs, w).abs()[keep].cpu().numpy()) for w in widths)
    iso = ons = None
    if rel is not None and z.shape[1] > 1:  # a single step has no neighbour to jump from
        unit = rel.to(torch.float64)[:, None]
        if isolated:
            iso = fit_tail((isolation(z, obs) * unit).abs()[keep].cpu().numpy())
        if onsets and z.shape[1] > 2:  # a level is two points, against two more
            ons = fit_tail((onset(z, obs) * unit).abs()[keep].cpu().numpy())
    draft = WindowTails(widths, tails, 1.0, None, iso, ons)
    m = _smallest_log_tail(z, obs, replace(point, windows=draft), rel)[keep].cpu().numpy()
    members = 1 + len(widths) + (iso is not None) + (ons is not None)
    factor = float(np.clip((m < math.log(COMBINE_AT)).mean() / COMBINE_AT, 1.0, members))
    return WindowTails(widths, tails, factor, _empirical_knots(-m), iso, ons)


def fit_step_scale(
    abs_z: np.ndarray, observed: np.ndarray, min_points: int = 50, clip: float = 4.0
) -> tuple[float, ...] | None:
    """Per-step residual scale from out-of-sample |z| (n, H) and its mask: the median at each
    step over the median of all, clipped to [1/clip, clip]; steps with fewer than
    ``min_points`` observations get 1. None when there is too little data to say."""
    z = np.where(observed, np.asarray(abs_z, dtype=np.float64), np.nan)
    z[~np.isfinite(z)] = np.nan
    overall = np.nanmedian(z) if np.isfinite(z).any() else np.nan
    if not np.isfinite(overall) or overall <= 0:
        return None
    counts = np.isfinite(z).sum(0)
    with np.errstate(all="ignore"):
        per_step = np.nanmedian(np.where(counts[None, :] > 0, z, 0.0), axis=0) / overall
    per_step = np.where(counts >= min_points, per_step, 1.0)
    return tuple(float(x) for x in np.clip(per_step, 1.0 / clip, clip))


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
    # a sample of mostly exact zeros (``isolation``: every slope and step is 0): the t is
    # fitted to the nonzero values, so it is heavier than the whole sample's tail (by the
    # inverse of their share) and the knots, of the whole sample, place the tail
    body = z if np.quantile(z, 0.5) > 0 else z[z > 0]
    if body.size < 20:
        return TailModel(max(float(np.quantile(z, 0.9)), 1e-6) / _t_ppf(0.95, math.inf), math.inf)
    q50, q90 = np.quantile(body, [0.5, 0.9])
    ratio = q90 / q50
    # |z| quantiles 0.5 / 0.9 are the t's 0.75 / 0.95 quantiles
    best = min(DOF_GRID, key=lambda d: abs(_t_ppf(0.95, d) / _t_ppf(0.75, d) - ratio))
    tail = TailModel(float(q50 / _t_ppf(0.75, best)), best)
    knots = _empirical_knots(z) if empirical else None
    return tail if knots is None else replace(tail, knots=knots)


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


def _two_sided_tail_torch(abs_z, tail: TailModel):  # noqa: ANN001, ANN202
    import torch

    return torch.exp(_log_tail_torch(abs_z, tail))


def _log_tail_torch(abs_z, tail: TailModel):  # noqa: ANN001, ANN202
    """log P(|Z| > |z|) of single points (torch, float64): ``log_tail`` on a device."""
    import torch

    point = tail.point
    cells = _torch_table(point, _point_table, abs_z.device)
    return _interp_table(abs_z.to(torch.float64).abs(), cells)
