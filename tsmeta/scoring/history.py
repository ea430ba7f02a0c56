"""A series judged against its own past: its residual history.

The cluster's tail model (``tails``) is fitted on the training corpus. A series whose
residuals run larger or smaller than its cluster's (a stream unlike anything trained on)
is then flagged too often or too rarely, and no single threshold serves all series.
``ResidualHistory`` keeps, per series, the count, mean and sum of squared deviations of
its residuals on earlier nights (three numbers a series, merged night by night with
Chan's update), and ``own_tail`` reads a residual's two-sided normal tail against them;
where a series' nights leave a normal's band clearly more often than a normal's do (three
more numbers: nights, wild episodes, the last night's), a Student's t of that tail weight
(``ResidualHistory.tail_dof``: under t noise of 4 degrees of freedom a normal own tail
flags 10x the rate at 1e-3, this one about 2x).
Where the cluster's scale grows with the level (``tsmeta.scoring.level``) the residuals
are divided by each point's level factor first (``ScoredDay.level``), so a busy hour and
a quiet one are judged against one history. The history keeps every residual, flagged
or not (a real change of level is then learned: its residuals widen the scale within a
night or two, instead of being flagged forever), except the members of a cluster's shared
events (``ResidualHistory.less``: a holiday is the cluster's, not the series' normal).

``combined_tail`` joins the two: a point is as rare as the larger of its cluster's and its
own-history tail probabilities say (rare only if both call it rare), times its cluster's
factor (``combine_factor``), counted on the cluster's earlier nights' unflagged points
(``CombineCounts``, kept with the history: a cluster's factor does not depend on how its
series are batched): the share of the points the cluster's tail alone puts below
``COMBINE_AT`` that stay below it with both, carried to the configured rate through the
correlation of two normal z-scores that share implies (the two tails agree less the
rarer the point). Without a factor the larger of two calibrated probabilities flags far
below the configured rate: 5.5e-5 and 2.6e-4 of clean points at 1e-3 on the two
generated families; with the share at ``COMBINE_AT`` as it is, 3.3e-4 and 6.6e-4
(docs/decisions.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri, owens_t, stdtr

from tsmeta.scoring.combine import COMBINE_AT, VETO_FACTOR_MIN

__all__ = ["ResidualHistory", "CombineCounts", "own_tail", "combine_factor", "combined_tail",
           "own_tail_and_wild", "wild_z", "MIN_HISTORY", "MIN_COMBINE_POINTS",
           "MIN_COMBINE_SERIES"]  # fmt: skip

MIN_HISTORY = 10  # fewer earlier residuals: no own tail (NaN)
# ``combine_factor`` needs at least this many points with an own tail that the cluster's
# tail puts below ``COMBINE_AT`` (about 1,000 points: 42 series-nights of 24), on a night
# with at least this many series with a history: the factor says how a cluster's two
# opinions overlap. Read from one series it would give back exactly the flags that
# series' own history called ordinary (NAB's single streams: 50.94 to 49.63). Fewer: no
# factor, the larger as it is
MIN_COMBINE_POINTS = 50
MIN_COMBINE_SERIES = 20
# the tail weight (``ResidualHistory.tail_dof``): a night is wild where a point leaves the
# band that a normal night leaves with probability WILD_NIGHT; nights count once judged
# against MIN_TAIL_HISTORY residuals (the standard deviation within 5%), are read from
# MIN_NIGHTS of them, and make a series heavy-tailed beyond WILD_SIGMAS of a normal's
# binomial spread; never heavier than a t of MIN_DOF (the same t for every series, NAB:
# 3 degrees of freedom 49.6, 4 54.1)
WILD_NIGHT = 0.05
MIN_TAIL_HISTORY = 200
MIN_NIGHTS = 5
WILD_SIGMAS = 3.0
MIN_DOF = 4.0
# a series' own jumps (``contrast``): read from MIN_JUMPS of them, each clipped at JUMP_CLIP
# of their root mean square as merged
MIN_JUMPS = 48
JUMP_CLIP = 4.0


def contrast(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a night's residuals (n, H): each point's local contrast, r_t minus the mean
    of its observed neighbours (its one jump where only one is observed; NaN where none is
    or the point is unobserved), and whether it is a peak or a trough (both jumps the same
    way; a spike's neighbours, or a step, jump one way only)."""
    nan = np.full((r.shape[0], 1), np.nan, dtype=r.dtype)
    a = r - np.concatenate([nan, r[:, :-1]], axis=1)
    b = r - np.concatenate([r[:, 1:], nan], axis=1)
    a, b = np.where(np.isnan(a), b, a), np.where(np.isnan(b), a, b)
    c = 0.5 * (a + b)
    c[:, [0, -1]] = np.nan  # the night's ends: a neighbour is unseen, not missing
    return c, np.sign(a) == np.sign(b)


@dataclass(frozen=True)
class ResidualHistory:
    """Per series: how many residuals, their mean and sum of squared deviations (float64);
    and its tail weight's counts: on how many nights it was scored against a history
    (``nights``), on how many of those a point left the band a normal leaves on one night
    in twenty where the night before it did not (``wild``: a run of wild nights, one
    episode, counts once; ``tail_dof``), and whether its last counted night was wild
    (``last``). Left out (histories saved before they were kept): none, a normal tail."""

    count: np.ndarray  # (n,)
    mean: np.ndarray  # (n,)
    m2: np.ndarray  # (n,)
    nights: np.ndarray | None = None  # (n,)
    wild: np.ndarray | None = None  # (n,)
    last: np.ndarray | None = None  # (n,) 1: the last counted night was wild
    jumps: np.ndarray | None = None  # (n,) how many local contrasts (``contrast``)
    j2: np.ndarray | None = None  # (n,) their sum of squares

    def __post_init__(self) -> None:
        for name in ("nights", "wild", "last", "jumps", "j2"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros_like(self.count, dtype=np.float64))

    @classmethod
    def empty(cls, n: int) -> ResidualHistory:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n))

    def wild_night(self, residual: np.ndarray) -> np.ndarray:
        """Per series row of a night's residuals (n, H): 1 where a point is beyond the band
        ``wild_z(H)`` of this history (a normal's night leaves it with probability
        ``WILD_NIGHT``), 0 where none is, NaN where the night is not counted (no residual,
        or fewer than ``MIN_TAIL_HISTORY`` earlier ones: the band of a short history's
        standard deviation is too often left)."""
        return _wild_of(self.z(residual), self.count)

    def merged(self, residual: np.ndarray, wild: np.ndarray | None = None) -> ResidualHistory:
        """This history with a night's residuals (n, H) added; NaN: not observed. Sums are
        accumulated in float64 whatever the residuals' precision. ``wild``: the night's
        ``wild_night`` (default: of these residuals; a caller that clips them passes the
        unclipped night's)."""
        r = _floating(residual)
        if r.ndim != 2 or r.shape[0] != self.count.shape[0]:
            raise ValueError(f"residuals of shape {r.shape} for a history of "
                             f"{self.count.shape[0]} series; give one row per series")  # fmt: skip
        if wild is None:
            wild = self.wild_night(r)
        counted = ~np.isnan(wild)
        n_b = np.count_nonzero(~np.isnan(r), axis=1).astype(np.float64)
        total = np.nansum(r, axis=1, dtype=np.float64)
        mean_b = np.divide(total, n_b, out=np.zeros_like(n_b), where=n_b > 0)
        dev = r - mean_b[:, None].astype(r.dtype)
        np.square(dev, out=dev)
        m2_b = np.nansum(dev, axis=1, dtype=np.float64)
        n = self.count + n_b
        delta = mean_b - self.mean
        share = np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)
        c = contrast(r)[0]
        known, sd = self._jump_sd()
        c2 = np.square(c)
        cap = np.where(known, (JUMP_CLIP * sd) ** 2, np.inf)[:, None]
        np.minimum(c2, cap.astype(c2.dtype), out=c2)
        return ResidualHistory(
            count=n,
            mean=self.mean + delta * share,
            m2=self.m2 + m2_b + delta**2 * self.count * share,
            nights=self.nights + counted,
            wild=self.wild + np.where(counted, wild * (1.0 - self.last), 0.0),
            last=np.where(counted, wild, self.last),
            jumps=self.jumps + np.count_nonzero(~np.isnan(c), axis=1),
            j2=self.j2 + np.nansum(c2, axis=1, dtype=np.float64),
        )

    def _jump_sd(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows with at least MIN_JUMPS local contrasts, their root mean square; 0 elsewhere)."""
        known = self.jumps >= MIN_JUMPS
        return known, np.sqrt(np.divide(self.j2, self.jumps, out=np.zeros_like(self.j2),
                                        where=known))  # fmt: skip

    def tail_dof(self, steps: int) -> np.ndarray:
        """Each series' tail weight for a night of ``steps`` points: the degrees of freedom
        (at least ``MIN_DOF``) of the Student's t of unit variance that leaves the night's
        band ``wild_z(steps)`` as often as its nights did (read from how often a wild night
        followed a calm one); ``math.inf`` (a normal) where that is not more than a normal's
        by ``WILD_SIGMAS`` of its binomial spread, or fewer than ``MIN_NIGHTS`` counted. How
        often, not how far: an anomaly is one episode, a bursty series' bursts come back
        night after night, and only those make its next one less surprising."""
        n, p0 = self.nights, WILD_NIGHT * (1.0 - WILD_NIGHT)  # a wild night after a calm one
        share = self.wild / np.maximum(n, 1.0)
        heavy = (n >= MIN_NIGHTS) & (self.wild > n * p0 + WILD_SIGMAS * np.sqrt(n * p0 * (1 - p0)))
        # independent nights: the share of wild nights r, r (1 - r) = share (r <= 1/2)
        r = 0.5 * (1.0 - np.sqrt(np.maximum(1.0 - 4.0 * share, 0.0)))
        # the point's rate of leaving the band over a normal's (nights of independent points)
        ratio = np.log1p(-np.clip(r, 0.0, 0.5)) / math.log1p(-WILD_NIGHT)
        dofs, ratios = _dof_ratios(steps)
        dof = np.interp(ratio, ratios, dofs, left=np.inf, right=MIN_DOF)
        return np.where(heavy, dof, np.inf)

    def _known_sd(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows with at least MIN_HISTORY residuals, their standard deviation; 0 elsewhere)."""
        known = self.count >= MIN_HISTORY
        return known, np.sqrt(np.divide(self.m2, self.count, out=np.zeros_like(self.m2),
                                        where=known))  # fmt: skip

    def clipped(self, residual: np.ndarray, c: float) -> np.ndarray:
        """Residuals (n, H) clipped to c standard deviations of the history around its mean
        (rows with fewer than MIN_HISTORY residuals as they are)."""
        r = _floating(residual)
        known, sd = self._known_sd()
        lo = np.where(known, self.mean - c * sd, -np.inf)[:, None].astype(r.dtype)
        hi = np.where(known, self.mean + c * sd, np.inf)[:, None].astype(r.dtype)
        return np.clip(r, lo, hi)

    def less(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> ResidualHistory:
        """This history without some of the residuals it holds, given as their own count,
        mean and sum of squared deviations per series (``merged`` undone: Chan's update
        solved for the rest). A series left with none has the empty history. The tail
        weight's counts are kept."""
        n = self.count - count
        left = n > 0
        safe = np.where(left, n, 1.0)
        rest = np.where(left, (self.count * self.mean - count * mean) / safe, 0.0)
        delta = mean - rest
        m2_rest = self.m2 - m2 - delta**2 * count * n / np.where(left, self.count, 1.0)
        return ResidualHistory(np.where(left, n, 0.0), rest,
                               np.where(left, np.maximum(m2_rest, 0.0), 0.0),
                               self.nights, self.wild, self.last, self.jumps, self.j2)  # fmt: skip

    def z(self, residual: np.ndarray) -> np.ndarray:
        """|residual - mean| / standard deviation, per series row, in the residuals'
        precision; NaN where the series has fewer than MIN_HISTORY earlier residuals. A
        series whose residuals never varied: 0 at its mean, infinite elsewhere."""
        r = _floating(residual)
        known, sd = self._known_sd()
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


def wild_z(steps: int) -> float:
    """The |z| a night of ``steps`` independent normal points leaves with probability
    ``WILD_NIGHT`` (3.1 for 24 hourly points, 3.8 for 288 of five minutes)."""
    per_point = -math.expm1(math.log1p(-WILD_NIGHT) / max(steps, 1))
    return float(ndtri(1.0 - per_point / 2.0))


@lru_cache(maxsize=64)
def _dof_ratios(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(degrees of freedom, rising; the unit-variance t's tail beyond ``wild_z(steps)`` over
    the normal's, falling), reversed for ``np.interp``: ratios rising."""
    z = wild_z(steps)
    dofs = np.geomspace(MIN_DOF, 1000.0, 400)
    ratios = stdtr(dofs, -z * np.sqrt(dofs / (dofs - 2.0))) / ndtr(-z)
    return dofs[::-1].copy(), ratios[::-1].copy()


def _wild_of(z: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``ResidualHistory.wild_night`` of a night's |z| (n, H) against a history of ``count``
    residuals (n,)."""
    wild = (z > wild_z(z.shape[1])).any(axis=1).astype(np.float64)  # NaN is never beyond
    wild[np.isnan(z).all(axis=1) | (count < MIN_TAIL_HISTORY)] = np.nan
    return wild


def own_tail(residual: np.ndarray, history: ResidualHistory) -> np.ndarray:
    """Two-sided tail probability of each residual against its series' history (in the
    residuals' precision; NaN where not scored or without history): a normal's, or where
    its nights are clearly wilder than a normal's (``ResidualHistory.tail_dof``) the
    Student's t of that tail weight at the history's standard deviation (a bursty series'
    tenth burst is not a once-in-a-billion point)."""
    return own_tail_and_wild(residual, history)[0]


def own_tail_and_wild(residual: np.ndarray, history: ResidualHistory,
                      jumps: bool = True) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``own_tail`` and the night's ``ResidualHistory.wild_night``, from one pass of z."""
    z = history.z(residual)
    wild = _wild_of(z, history.count)
    dof = history.tail_dof(z.shape[1])
    known, sd = history._jump_sd()
    two = None  # the points also judged by their jumps
    if jumps and known.any():  # a peak or trough against the series' own jumps too
        c, peak = contrast(_floating(residual))
        two = known[:, None] & ~np.isnan(c) & ~np.isnan(z)
        with np.errstate(divide="ignore", invalid="ignore"):
            j = np.where(peak & two, np.abs(c), 0.0) / sd[:, None].astype(c.dtype)
        z = np.fmax(z, np.where(two, j, z))
    heavy = np.flatnonzero(np.isfinite(dof))
    t = z[heavy] if heavy.size else None
    np.negative(z, out=z)
    ndtr(z, out=z)
    z *= 2.0
    if t is not None:
        df = dof[heavy, None]
        z[heavy] = 2.0 * stdtr(df, -t * np.sqrt(df / (df - 2.0)))
    if two is not None:  # the smaller of two tails, as rare as one (Sidak): 1 - (1 - p)^2
        z[two] *= 2.0 - z[two]
    return z, wild


@dataclass(frozen=True)
class CombineCounts:
    """What a cluster's factor is read from (``combine_factor``): among its points with
    both tails, how many its cluster tail puts below ``COMBINE_AT`` (``below``), how many of
    those the larger of both keeps below it (``kept``), and over how many series
    (``series``: a night's, not summed over nights)."""

    below: float = 0.0
    kept: float = 0.0
    series: float = 0.0

    @classmethod
    def of(cls, cluster: np.ndarray, own: np.ndarray,
           keep: np.ndarray | None = None) -> CombineCounts:  # fmt: skip
        """The counts of one batch's points (series, steps): cluster and own tails; ``keep``:
        the points counted (the night's flagged points are left out: anomalies, which
        both call rare, would otherwise make the two look more alike than on clean data)."""
        c, o = np.asarray(cluster), np.asarray(own)  # compared as they are: no float64 copies
        has = ~np.isnan(c) & ~np.isnan(o)
        if keep is not None:
            has &= keep
        low = c[has] < COMBINE_AT
        return cls(float(np.count_nonzero(low)),
                   float(np.count_nonzero(low & (o[has] < COMBINE_AT))),
                   float(np.count_nonzero(has.any(axis=-1))))  # fmt: skip

    def __add__(self, other: CombineCounts) -> CombineCounts:  # the same night's batches
        return CombineCounts(self.below + other.below, self.kept + other.kept,
                             self.series + other.series)  # fmt: skip

    def after(self, tonight: CombineCounts, memory: float) -> CombineCounts:
        """These counts of earlier nights, each night's weight ``1 - 1/memory`` of the
        next's, with tonight's added (series: tonight's where it scored any)."""
        keep = 1.0 - 1.0 / memory
        return CombineCounts(self.below * keep + tonight.below, self.kept * keep + tonight.kept,
                             tonight.series or self.series)  # fmt: skip


def _kept_share(at: float, rho: float) -> float:
    """The share of the points one two-sided normal tail puts below ``at`` that the other
    keeps below it too, when the two z-scores are jointly normal with correlation ``rho``
    (Owen's T: P(|Z1| > a, |Z2| > a) = 2 P(Z1 > a, Z2 > a; rho) + 2 P(Z1 > a, Z2 > a; -rho))."""
    a = float(ndtri(1.0 - at / 2.0))
    both = sum(owens_t(a, math.sqrt((1.0 - r) / (1.0 + r))) for r in (rho, -rho))
    return min(max(2.0 - 4.0 * float(both) / at, 0.0), 1.0)


def combine_factor(counts: CombineCounts, rate: float = COMBINE_AT) -> float:
    """The factor that gives the larger of the two tails back the rate ``rate``: the share
    of the points the cluster's tail puts below x that stay below it with both, at the x
    where that share times x is ``rate`` (so P(larger * factor < rate) = rate). Counted at
    ``COMBINE_AT`` (``counts``: enough points there), read at x through the correlation of
    the two z-scores that share implies: the two agree less the rarer the point (a series
    whose own scale is larger than its cluster's keeps fewer of its cluster's extremes
    than of its 5% tail), and the share at 0.05 alone gives back a third of the rate at
    1e-3 (docs/decisions.md). At least ``VETO_FACTOR_MIN``; 1 with fewer than
    ``MIN_COMBINE_POINTS`` such points or ``MIN_COMBINE_SERIES`` series."""
    if counts.below < MIN_COMBINE_POINTS or counts.series < MIN_COMBINE_SERIES:
        return 1.0
    share = min(max(counts.kept / counts.below, VETO_FACTOR_MIN), 1.0)
    if share >= 1.0 or rate >= COMBINE_AT * share:  # read where it was counted (or above)
        return share
    if share <= COMBINE_AT:  # no more than chance: independent
        rho = 0.0
    else:
        rho = brentq(lambda r: _kept_share(COMBINE_AT, r) - share, 0.0, 1.0 - 1e-9)
    # x * kept share(x) grows with x: from rate (share <= 1) to COMBINE_AT
    lx = brentq(lambda lx: lx + math.log(max(_kept_share(math.exp(lx), rho), 1e-300))
                - math.log(rate), math.log(rate), math.log(COMBINE_AT))  # fmt: skip
    return max(rate / math.exp(lx), VETO_FACTOR_MIN)


def combined_tail(cluster: np.ndarray, own: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """Each point's tail probability from its cluster's (``cluster``, NaN: not scored) and
    its own history's (``own``, NaN: no history): the larger of the two times ``factor``
    (``combine_factor``'s, read from the cluster's earlier nights). Points without history
    keep the cluster's tail; float64."""
    c = np.asarray(cluster, dtype=np.float64)
    o = np.asarray(own, dtype=np.float64)
    both = np.fmax(c, o)  # NaN own: the cluster's; NaN cluster stays NaN below
    if factor != 1.0:
        both = np.where(np.isnan(o), both, both * factor)
    both[np.isnan(c)] = np.nan
    return both
