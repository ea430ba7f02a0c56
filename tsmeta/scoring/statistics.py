"""Statistics of a night's signed z-scores beyond the single point (torch, batched over series).

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
``tsmeta.meta.calibrate.contrast_sigma``), and ``WindowTails.isolation`` is its tail, one more
member of the calibrated smallest (with the point and its two windows).

A level shift is sustained, but so is a forecast miss. What a shift has and a drift has
not is an abrupt start and end: ``onset`` compares the level two neighbouring points agree
on with the level of the two beside them (the smaller of two same-signed deviations, so
one spike is no level), in the same units as isolation; its tail is one more member of
the calibrated smallest (``WindowTails.onset``).
"""

from __future__ import annotations

from functools import cache

# widths of the centred windows whose median z reveals a sustained deviation (a level shift,
# a stuck value, a changed season) whose single points stay inside the band
WINDOWS = (5, 12)


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

    rank = ((count - 1).clamp_min(0) // 2).to(torch.int64)
    return sorted_columns(cols).gather(0, rank[None]).squeeze(0)


def sorted_columns(cols):  # noqa: ANN001, ANN201 - torch tensors
    """The same-shape tensors ``cols`` sorted elementwise, stacked on a new leading axis:
    by a sorting network (``_sorting_network``: minima and maxima of whole tensors, faster
    on the CPU than torch.sort along a short leading axis; the same values)."""
    import torch

    cols = list(cols)
    for i, j in _sorting_network(len(cols)):
        cols[i], cols[j] = torch.minimum(cols[i], cols[j]), torch.maximum(cols[i], cols[j])
    return torch.stack(cols)


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
    out = torch.nan_to_num(out, nan=0.0)
    out[:, [0, -1]] = 0.0  # the horizon's ends: a neighbour is unseen, not missing
    return out


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
