"""A point's tail probability: the calibrated smallest of its own and its statistics' tails,
then the seasonal-naive veto; and the fitting of both combinations.

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
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import numpy as np

from tsmeta.scoring.statistics import WINDOWS, isolation, onset, window_medians
from tsmeta.scoring.tables import (
    _TABLES_CACHED,
    _empirical_knots,
    _interp_table,
    _knot_tail_table,
    _torch_table,
)
from tsmeta.scoring.tails import TailModel, WindowTails, _log_tail_torch, fit_tail

# the seasonal-naive veto's deviations are divided by this before their normal tail is
# taken: smaller, a weaker veto (stored with each fit: ``TailModel.veto_scale``). With the
# week before among the forecaster's inputs (``FeatureSpec.second_lag``) a strong veto
# lifts injected spikes and dips that land near a reference; 0.71 was the best of 1, 0.71
# and 0.5 across M4 and the generator (docs/decisions.md)
NAIVE_VETO_SCALE = 0.71
VETO_FACTOR_MIN = 0.05  # the veto's factor is never below this (fit_veto)
# where the factor of the smallest-of-several tail probabilities is read (high enough that
# anomalies in the calibration windows, a percent or so of points, barely move it)
COMBINE_AT = 0.05


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
    observed points to fit on (default all; ``tsmeta.meta.calibrate.calibrate`` leaves out
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
    from out-of-sample signed z (B, H) (already divided by the level and weekday factors) and their
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
