"""A night's window without its cluster's earlier shared events (a holiday, an outage).

The steps of those events are unobserved before the night, so that an event is neither
what a series adapts from nor what its lag medians, spread and veto read as the series'
normal. Where the cluster has a period, an event before the support stays in with each
series' factor over it divided out (below): left out, it made the lag medians read one
period further back on its phases (a trending series' reference a period stale on the
same weekday one and two weeks after a holiday). A series that would keep under half of
its K support points (a one-day holiday before a day's support) keeps them too, divided
the same way: the median of its
event points' ratios to their references (the median of the same phase over the
``LAG_PERIODS`` periods before, outside events) over the median of the same ratios on the
K points before the support (where a night did not read their references, as in a weekly
cluster with K = 24: on the same phases whole periods back, ``before_offset``), so that a
break or a trend the series had before the event stays its own. Where a series' factor is
more than ``OWN_FACTOR_SPAN`` from the batch's median (the event's shared factor), the
shared one is divided out instead: a break of the series' own on the event's day keeps
its new level. Without a period (walks) such a support is divided by the event's shared
factor alone (``_divided_shared``: a walk's own move cannot be told from the event's, so
each keeps its own). Kept as they were: the supports of series of other signs or with too
few references, and of an event that began before the support (a change of the whole
cluster that goes on: learned as the new normal by its second night).

Pure numpy: ``tsmeta.jobs.history`` turns the remembered events into the steps to leave out.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["without_steps", "before_offset", "LAG_PERIODS", "MIN_FACTOR_POINTS",
           "OWN_FACTOR_SPAN", "MIN_FACTOR_SERIES"]  # fmt: skip

LAG_PERIODS = 3  # a point's reference: the same phase's median over this many periods
MIN_FACTOR_POINTS = 3  # each of a factor's two medians rests on at least this many points
OWN_FACTOR_SPAN = 1.25  # a series' own factor is divided out within this of the shared one
MIN_FACTOR_SERIES = 5  # the shared factor: the median of at least this many series'


def without_steps(values: np.ndarray, mask: np.ndarray, drop: np.ndarray, k: int,
                  horizon: int, period: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(values, mask) of a window (n, T) with the steps ``drop`` (T,) unobserved before its
    last ``horizon`` steps, and a support they would mostly empty, and with a ``period``
    the events before the support, divided by the event's factor instead (module
    docstring; ``period`` 0: the support divided by the shared factor, earlier events
    left out)."""
    night0 = mask.shape[1] - horizon
    masked = mask & ~drop
    first = max(0, night0 - k)
    enough = 2 * masked[:, first:night0].sum(1) >= mask[:, first:night0].sum(1)
    out_mask = np.where(enough[:, None], masked, mask)
    out = np.where(out_mask, values, np.nan).astype(values.dtype)
    if not enough.all() and not (first and drop[first - 1]):
        rows = np.nonzero(~enough)[0]
        if period:
            scaled, ok = _divided(values[rows], mask[rows], drop, first, night0, period)
        else:
            scaled, ok = _divided_shared(values[rows], mask[rows], drop, first, night0)
        keep = rows[ok]
        out_mask[keep] = masked[keep]
        out_mask[keep, first:night0] = mask[keep, first:night0]
        out[keep] = np.where(out_mask[keep], values[keep], np.nan)
        out[keep, first:night0] = np.where(out_mask[keep, first:night0], scaled[ok], np.nan)
    if period:  # earlier events: read by lag medians and the veto at the series' level
        for a, b in _spans(drop[:first]):
            # the columns _divided reads
            lo = max(0, a - before_offset(b - a, period) - LAG_PERIODS * period)
            scaled, ok = _divided(values[:, lo:b], mask[:, lo:b], drop[lo:b], a - lo, b - lo,
                                  period)  # fmt: skip
            rows = np.nonzero(ok)[0]
            out_mask[rows, a:b] = mask[rows, a:b]
            out[rows, a:b] = np.where(mask[rows, a:b], scaled[ok], np.nan)
    return out, out_mask


def _spans(flags: np.ndarray) -> list[tuple[int, int]]:
    """The [start, end) runs of True in ``flags`` (T,)."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()
    return list(zip(starts, ends, strict=True))


def _divided(values: np.ndarray, mask: np.ndarray, drop: np.ndarray, first: int, night0: int,
             period: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The support steps ``first:night0`` of rows (R, T) with their event points divided by
    the event's factor (module docstring): (values (R, K), ok (R,): a factor was found)."""
    k = night0 - first

    def cols(lo: int, inside: bool) -> np.ndarray:  # (R, K) float64: the columns lo.. observed
        out = np.full((len(values), k), np.nan)  # in events (``inside``) or out; NaN else
        at = np.arange(lo, lo + k)
        at = at[at >= 0]
        keep = mask[:, at] & (drop[at] == inside)
        out[:, k - len(at) :] = np.where(keep, values[:, at], np.nan)
        return out

    def ratios(here: np.ndarray, lo: int) -> np.ndarray:  # here over its references; NaN: none
        ref = _nanmedian(np.stack([cols(lo - j * period, False)
                                   for j in range(1, LAG_PERIODS + 1)]), 0)  # fmt: skip
        good = (here > 0) & (ref > 0)  # False where either is NaN
        return np.where(good, here / np.where(good, ref, 1.0), np.nan)

    back = before_offset(k, period)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN phases: no reference
        during = ratios(cols(first, True), first)
        before = ratios(cols(first - k, False), first - k)
        short = np.isfinite(before).sum(1) < MIN_FACTOR_POINTS
        if back != k and short.any():  # not read: the same phases whole periods back
            before[short] = ratios(cols(first - back, False), first - back)[short]
        factor = _nanmedian(during, 1) / _nanmedian(before, 1)
    ok = (np.isfinite(during).sum(1) >= MIN_FACTOR_POINTS) & np.isfinite(factor) & (factor > 0)
    ok &= np.isfinite(before).sum(1) >= MIN_FACTOR_POINTS
    if ok.sum() >= MIN_FACTOR_SERIES:  # the shared part: a series far from it changed too
        shared = np.median(factor[ok])
        own = ok & (np.abs(np.log(np.where(ok, factor, 1.0) / shared)) <= np.log(OWN_FACTOR_SPAN))
        factor = np.where(own, factor, shared)
    scale = np.where(drop[first:night0], np.where(ok, factor, 1.0)[:, None], 1.0)
    return (values[:, first:night0].astype(np.float64) / scale).astype(values.dtype), ok


def _divided_shared(values: np.ndarray, mask: np.ndarray, drop: np.ndarray, first: int,
                    night0: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Without a period: the support steps ``first:night0`` of rows (R, T) with their event
    points divided by the event's shared factor, the median over the rows of each one's
    median over its event points to its median over the K points before the support
    (outside events): a walk's own move stays its own, the event's shared move is divided
    out. (values (R, K), ok (R,): both medians positive, on ``MIN_FACTOR_POINTS`` or more,
    and ``MIN_FACTOR_SERIES`` such rows.)"""
    k = night0 - first
    lo = max(first - k, 0)
    support = values[:, first:night0]
    if lo == first:  # nothing before the support to compare with
        return support, np.zeros(len(values), dtype=bool)
    inside = mask[:, first:night0] & drop[first:night0]
    outside = mask[:, lo:first] & ~drop[lo:first]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        during = _nanmedian(np.where(inside, values[:, first:night0], np.nan), 1)
        before = _nanmedian(np.where(outside, values[:, lo:first], np.nan), 1)
    ok = (inside.sum(1) >= MIN_FACTOR_POINTS) & (outside.sum(1) >= MIN_FACTOR_POINTS)
    ok &= (during > 0) & (before > 0)  # False where either is NaN
    if ok.sum() < MIN_FACTOR_SERIES:
        return support, np.zeros(len(values), dtype=bool)
    shared = float(np.median(during[ok] / before[ok]))
    scale = np.where(drop[first:night0], shared, 1.0)
    return (support.astype(np.float64) / scale).astype(values.dtype), ok


def before_offset(k: int, period: int) -> int:
    """Where a factor's "before" ratios are read where the K points just before the support
    have too few references: the same phases the smallest whole number of periods (at least
    K) back. A night reads only the support's lags (``tsmeta.meta.tasks.steps_read``): in a
    weekly cluster adapting from K = 24 the day before the support is read but not its
    references a week apart, the same day a week before and its references are."""
    return period * -(-k // period)


def _nanmedian(x: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmedian`` along ``axis`` by one sort (NaNs sort last) and the count of the
    rest: several times faster on short axes, where numpy's goes through masked arrays."""
    x = np.sort(x, axis=axis)
    count = np.expand_dims((~np.isnan(x)).sum(axis), axis)
    lower = np.take_along_axis(x, np.maximum(count - 1, 0) // 2, axis)
    upper = np.take_along_axis(x, np.minimum(count // 2, x.shape[axis] - 1), axis)
    out = np.where(count > 0, (lower + upper) / 2, np.nan)
    return np.squeeze(out, axis)
