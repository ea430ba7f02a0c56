"""Tasks: one series cut at a time t0; support = K points before t0, query = H after.

The same construction serves meta-training (random series and cuts) and nightly scoring
(every series, cut at the start of the scored day), so the model is trained exactly as
it is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from tsmeta.forecaster import (
    FeatureSpec,
    build_features,
    lagged,
    seasonal_lag,
    support_normalisation,
    take_columns,
)

__all__ = [
    "TaskBatch",
    "make_batch",
    "sample_tasks",
    "earliest_cut",
    "window_reach",
    "steps_read",
    "robust_sigma",
    "NORMALISATION",
]

CLIP = 10.0  # normalised values are winsorised at +-CLIP
REL_FLOOR = 0.01  # scale >= REL_FLOOR * |location|
# ``TaskBatch.jump`` reads the JUMP_SPAN supports before the cut (``jump_width``)
JUMP_SPAN = 4
# recorded in every checkpoint: how inputs and targets were normalised
NORMALISATION = {"location": "mean of observed support points", "scale": "std of observed support points",
                 "scale_rel_floor": REL_FLOOR, "clip": CLIP}  # fmt: skip


@dataclass
class TaskBatch:
    xs: torch.Tensor  # (B, K, F) support features
    ys: torch.Tensor  # (B, K) normalised support targets
    ms: torch.Tensor  # (B, K) 1.0 where observed
    xq: torch.Tensor  # (B, H, F) query features
    yq: torch.Tensor  # (B, H) normalised query targets (0 where unobserved)
    mq: torch.Tensor  # (B, H)
    loc: torch.Tensor  # (B,) normalisation location
    scale: torch.Tensor  # (B,) normalisation scale
    # what targets are relative to (normalised; FeatureSpec.relative_to_lag), None: zero
    base_s: torch.Tensor | None = None  # (B, K)
    base_q: torch.Tensor | None = None  # (B, H)
    # robust spread of the support's seasonal differences (normalised units; 0 where none
    # is observed), None without a seasonal lag: the unit of ``naive`` below
    spread: torch.Tensor | None = None  # (B,)
    # each query point's seasonal-naive deviation in units of ``spread``: its value minus
    # the support's last same-phase value, over the spread (+inf where either is missing
    # or the spread is 0), None without a seasonal lag: the veto of ``tsmeta.scoring``.
    # With ``FeatureSpec.veto_lag``, the smaller of that and the deviation from the value
    # veto_lag steps back over the robust spread of the support's differences at that lag.
    # With ``FeatureSpec.veto_neighbours`` each deviation is also measured against its
    # neighbours' (``_against_neighbours``)
    naive: torch.Tensor | None = None  # (B, H)
    # the global grid step of each task's first query point (its night's first step)
    night_step: torch.Tensor | None = None  # (B,) int64
    # the robust scale of the series' own local contrast (a point minus the mean of its
    # neighbours) over the ``JUMP_SPAN`` supports before the cut (normalised units): the
    # unit of ``tsmeta.scoring.isolation`` and ``onset`` (``_jump_scale``)
    jump: torch.Tensor | None = None  # (B,)

    def __len__(self) -> int:
        return self.xs.shape[0]

    def select(self, rows: torch.Tensor) -> TaskBatch:
        """The tasks ``rows`` (an index or boolean mask over the batch)."""
        return TaskBatch(*(None if v is None else v[rows] for v in
                           (getattr(self, f.name) for f in fields(self))))  # fmt: skip

    def forecast(self, pred_q: torch.Tensor) -> torch.Tensor:
        """Query predictions (target space) in the series' raw units."""
        level = pred_q if self.base_q is None else pred_q + self.base_q
        return self.loc[:, None] + self.scale[:, None] * level


def earliest_cut(spec: FeatureSpec, k: int) -> int:
    """First t0 whose support points all have their seasonal lag inside the window (and
    of the veto's second reference, ``FeatureSpec.veto_lag``, and of the second lagged
    input, ``FeatureSpec.second_lag``)."""
    return k + max(spec.period if spec.seasonal_lag else 0, spec.veto_lag, spec.second_lag)


def steps_read(spec: FeatureSpec, k: int, horizon: int) -> set[int]:
    """The steps, relative to the forecast origin (0: the first forecast step), that
    scoring a horizon reads: the support, the horizon, their lags (each period of the
    lagged inputs' median, the veto's reference) and the period before the support that
    the stuck-support check compares with. Everything else in a window is never read."""
    out = set(range(-k, horizon)) | set(range(-k - spec.period, -k))
    out.update(range(-jump_width(spec, k), 0))  # the series' own jumps (``TaskBatch.jump``)
    lags = []
    if spec.seasonal_lag:
        lags.append((spec.period, spec.lag_periods + spec.spare))
    if spec.second_lag:
        lags.append((spec.second_lag, spec.lag_periods + spec.spare))
    if spec.veto_lag:
        lags.append((spec.veto_lag, 1))
    for lag, periods in lags:
        # a horizon longer than the lag reads further back past the cut (see ``lagged``)
        for back in range(1, periods + (horizon - 1) // lag + 1):
            out.update(range(-k - back * lag, horizon - back * lag))
    return out


def jump_lag(spec: FeatureSpec, k: int) -> int:
    """The lag ``TaskBatch.jump`` differences the season away at: the period, or K where
    the period is longer (a weekly cluster's days)."""
    return min(spec.period, k) if spec.period else k


def jump_width(spec: FeatureSpec, k: int) -> int:
    """Steps before the cut that ``TaskBatch.jump`` reads: ``JUMP_SPAN`` supports and one
    lag more (within what the lag medians read anyway: no day more is read)."""
    return JUMP_SPAN * k + jump_lag(spec, k)


def window_reach(spec: FeatureSpec, k: int, horizon: int) -> int:
    """Steps before the forecast origin that scoring reads (the earliest of
    :func:`steps_read`): the cut's needs and every period of the lagged inputs' median,
    including the further ones a horizon longer than a lag reads."""
    return -min(steps_read(spec, k, horizon))


def robust_sigma(resid: torch.Tensor, m: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Per-row robust residual scale: 1.4826 * median |r| over observed points, floored.

    resid, m (B, N) -> (B,): the lower median over the observed points (a row with none
    gives 1.4826, floored).
    """
    # the lower median of the observed |r| (torch's median is the lower one), by selection:
    # twice as fast as sorting every row, and the same value
    a = torch.where(m > 0, resid.abs(), torch.full_like(resid, float("nan")))
    cnt = m.sum(1)
    med = torch.nanmedian(a, dim=1).values
    med = torch.where(cnt > 0, med, torch.ones_like(med))
    return (1.4826 * med).clamp_min(floor)


def _jump_scale(vnorm: torch.Tensor, obs: torch.Tensor, cut: torch.Tensor, one: int | None,
                width: int, lag: int) -> torch.Tensor:  # fmt: skip
    """(B,) ``TaskBatch.jump``: 1.4826 * the median |c_t - c_(t-lag)| / sqrt(2) over the
    ``width`` steps before each cut (or fewer where the window starts later), where c_t =
    v_t - (v_(t-1) + v_(t+1)) / 2 is a point's local contrast and all six points are
    observed, floored like ``robust_sigma``: the series' own jumps, its season's shape
    differenced away (a sharp daily ramp is no jump). Read over days, not over the K
    support points: 23 contrasts leave a spike's isolation in units that vary from night
    to night by a third (the default family's aperiodic series: best event F1 of isolation
    alone 0.23 over 24 points, 0.48 over a week)."""
    dev = vnorm.device
    if one is not None:
        lo = max(one - width, 0)
        v, m = vnorm[:, lo:one], obs[:, lo:one]
    else:
        at = cut[:, None] - width + torch.arange(width, device=dev)
        cols = at.clamp_min(0)
        v, m = torch.gather(vnorm, 1, cols), torch.gather(obs, 1, cols) & (at >= 0)
    c = v[:, 1:-1] - 0.5 * (v[:, :-2] + v[:, 2:])
    ok = m[:, 1:-1] & m[:, :-2] & m[:, 2:]
    d = (c[:, lag:] - c[:, :-lag]) / math.sqrt(2.0)
    return robust_sigma(d, (ok[:, lag:] & ok[:, :-lag]).to(v.dtype))


def _naive_deviation(
    ys: torch.Tensor,
    ms: torch.Tensor,
    yq: torch.Tensor,
    lag_s: tuple[torch.Tensor, torch.Tensor],
    lag_q: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(spread (B,), deviation (B, H)) of one reference: the robust spread of the support's
    differences from its references ``lag_s`` (not centred: a support that moved away from
    them, a level shift or a changed shape, gets a wide spread; 0 where no pair is
    observed), and each query point's difference from its reference ``lag_q`` over it
    (+inf where the reference is missing or the spread is 0)."""
    both = ms * lag_s[1]
    spread = robust_sigma(ys - lag_s[0], both, 0.0) * (both.sum(1) > 0)
    ok = lag_q[1] & (spread > 0)[:, None]
    inf = torch.full((), float("inf"), dtype=yq.dtype, device=yq.device)
    return spread, torch.where(ok, (yq - lag_q[0]) / spread.clamp_min(1e-30)[:, None], inf)


def _in_jumps(spread: torch.Tensor, jump: torch.Tensor, on: bool = True) -> torch.Tensor | None:
    """(B,) what turns a deviation in units of ``spread`` into one in the series' own
    jumps (``_against_neighbours``): sqrt 2 jumps, the spread of a point's contrast less
    its reference's, times the veto's ``NAIVE_VETO_SCALE``, which the veto divides every
    deviation by (there a real tail, not a deliberately light one); 1 where there is no
    spread (no reference). None when not ``on`` (``FeatureSpec.veto_jumps``)."""
    from tsmeta.scoring.combine import NAIVE_VETO_SCALE

    if not on:
        return None
    unit = jump * (math.sqrt(2.0) / NAIVE_VETO_SCALE)
    return torch.where(spread > 0, spread / unit, torch.ones_like(spread))


def _against_neighbours(dev: torch.Tensor, mq: torch.Tensor,
                        ratio: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Seasonal-naive deviations (B, H) of the query points observed in ``mq``, each also
    measured against its neighbours': the larger of the point's own deviation and its
    deviation minus the median of those of the (observed, finite) points up to two steps
    either side, the latter in the series' own jumps (times ``ratio`` (B,), ``_in_jumps``;
    None: in the spread's units, as models saved before it). A point repeats its reference only when its neighbours repeat theirs
    the same way: a spike that lands on last week's value after the day moved away from
    last week is a spike, not a repeat, and a dip of a few jumps in a series whose days
    differ by far more is a dip; a day that repeats its reference stays explained.
    Infinite deviations (no reference) stay infinite; without neighbours, the point's own."""
    from tsmeta.scoring import lower_median

    H = dev.shape[1]
    inf = torch.full((), float("inf"), dtype=dev.dtype, device=dev.device)
    x = torch.where(mq & dev.isfinite(), dev, inf)  # unobserved or no reference: +inf
    xp = torch.nn.functional.pad(x, (2, 2), value=float("inf"))  # xp[:, j] = x[:, j - 2]
    # the lower median of the finite ones among the 4 neighbours, by a sorting network
    # (+inf sorted last): a few elementwise minima and maxima, faster than nanmedian
    cols = [xp[:, j : j + H] for j in (0, 1, 3, 4)]
    count = sum((c < inf).to(torch.int64) for c in cols)
    offset = lower_median(cols, count)
    local = dev - offset if ratio is None else (dev - offset) * ratio[:, None]
    local = torch.where(count > 0, local, dev)
    return torch.where(local.abs() > dev.abs(), local, dev)


def support_shift(obs: torch.Tensor, t0: torch.Tensor, k: int, period: int,
                  one: int | None = None) -> torch.Tensor | None:  # fmt: skip
    """(B,) steps each row's support is moved back, or None where no row's is: one
    ``period`` for a series that observed under half of the K points before its cut (its
    data stopped for a day, an outage) and at least half of the K points one period
    earlier (the same phases): it adapts from those and stays scored, instead of adapting
    from a few points or going unscored. ``one``: every row's cut."""
    if one is not None:
        if one - k - period < 0:
            return None
        now = obs[:, one - k : one].sum(1)
        before = obs[:, one - k - period : one - period].sum(1)
    else:
        cols = t0[:, None] - k + torch.arange(k, device=obs.device)
        now = torch.gather(obs, 1, cols.clamp_min(0)).sum(1)
        early = cols - period
        before = (torch.gather(obs, 1, early.clamp_min(0)) & (early >= 0)).sum(1)
    moved = (2 * now < k) & (2 * before >= k)
    if not bool(moved.any()):
        return None
    return moved.to(torch.int64) * period


def make_batch(
    values: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    t0: torch.Tensor,
    spec: FeatureSpec,
    k: int,
    horizon: int,
    start_step: int,
    clip: float = CLIP,
) -> TaskBatch:
    """Tasks for series ``rows`` cut at columns ``t0`` (both (B,) int64).

    Normalised values are winsorised at +-``clip``: a spike or a flat support must not
    blow up features or training targets (scoring measures residuals in raw units).
    values (n, T) float (NaN where unobserved), mask (n, T) bool. Query columns past the end
    of the window are treated as unobserved (the nightly forecast of a day with no data yet).
    """
    dev = values.device
    rows, t0 = rows.to(dev), t0.to(dev)
    v = values[rows]  # (B, T)
    obs = mask[rows]
    T = v.shape[1]
    # a night's batch cuts every row at one step: one row of columns (and of cuts) stands
    # for all (``lagged`` takes them as column slices), the support and query are slices
    one = int(t0[0]) if len(t0) and bool((t0 == t0[0]).all()) and int(t0[0]) >= k else None
    cut = t0[:1] if one is not None else t0
    back = support_shift(obs, t0, k, spec.period, one)
    s_one = one is not None and back is None  # every support a slice too
    s_cut = cut if s_one else (t0 if back is None else t0 - back)
    s_cols = s_cut[:, None] - k + torch.arange(k, device=dev)  # (B, K), or (1, K)
    q_cols = cut[:, None] + torch.arange(horizon, device=dev)  # (B, H), or (1, H)
    s_safe = s_cols if s_one else s_cols.clamp_min(0)
    if s_one:
        ys_raw = v[:, one - k : one].clone()  # v is normalised in place below
        ms = obs[:, one - k : one].to(v.dtype)
    else:
        ys_raw = torch.gather(v, 1, s_safe)
        ms = (torch.gather(obs, 1, s_safe) & (s_cols >= 0)).to(v.dtype)
    loc, scale = support_normalisation(torch.nan_to_num(ys_raw), ms, REL_FLOOR)
    # in place on the batch's copy (v is not read again): a (B, T) window, 6,000 columns
    # at 5 minutes, is not allocated four times over
    vnorm = v.sub_(loc[:, None]).div_(scale[:, None]).clamp_(-clip, clip).masked_fill_(~obs, 0.0)
    q_in = q_cols < T
    q_safe = q_cols.clamp_max(T - 1)
    ys = vnorm[:, one - k : one].clone() if s_one else torch.gather(vnorm, 1, s_safe)
    if one is not None:
        yq, mq = take_columns(vnorm, obs, q_safe[0])
    else:
        yq, mq = torch.gather(vnorm, 1, q_safe), torch.gather(obs, 1, q_safe)
    yq, mq = yq * q_in, mq & q_in  # (B, H) observed query points
    base_s = base_q = lag_s = lag_q = spread = naive = week_s = week_q = None
    jump = _jump_scale(vnorm, obs, cut, one, jump_width(spec, k), jump_lag(spec, k))
    if spec.seasonal_lag:  # a feature, the spread's reference, maybe the targets' base
        lag_s = seasonal_lag(spec, vnorm, obs, s_cols, cut)
        lag_q = seasonal_lag(spec, vnorm, obs, q_cols, cut)  # the support's last same phase
        spread, naive = _naive_deviation(ys, ms, yq, lag_s, lag_q)
        if spec.veto_neighbours:
            naive = _against_neighbours(naive, mq, _in_jumps(spread, jump, spec.veto_jumps))
        if spec.veto_lag:  # the second reference, in units of the support's own differences
            # at its lag (a week drifts more than a day): the nearer of the two deviations
            ref_s = lagged(spec.veto_lag, vnorm, obs, s_cols, cut)
            ref_q = lagged(spec.veto_lag, vnorm, obs, q_cols, cut)
            if spec.second_lag == spec.veto_lag and spec.lag_periods == 1:  # an input too
                week_s, week_q = ref_s, ref_q
            other_spread, other = _naive_deviation(ys, ms, yq, ref_s, ref_q)
            if spec.veto_neighbours:
                other = _against_neighbours(
                    other, mq, _in_jumps(other_spread, jump, spec.veto_jumps)
                )
            naive = torch.where(other.abs() < naive.abs(), other, naive)
    lag_in_s, lag_in_q = lag_s, lag_q
    if spec.seasonal_lag and spec.lag_periods > 1:  # the input: the median over periods
        lag_in_s = lagged(spec.period, vnorm, obs, s_cols, cut, spec.lag_periods, spec.spare)
        lag_in_q = lagged(spec.period, vnorm, obs, q_cols, cut, spec.lag_periods, spec.spare)
    if spec.relative_to_lag:  # the lag input is both a feature and the targets' base
        base_s, base_q = (lag_in_s[0], lag_in_q[0]) if spec.median_base else (lag_s[0], lag_q[0])
        ys, yq = ys - base_s, (yq - base_q) * q_in
    return TaskBatch(
        xs=build_features(spec, vnorm, obs, s_cols, start_step, cut, lag_in_s, week_s),
        ys=ys,
        ms=ms,
        xq=build_features(spec, vnorm, obs, q_cols, start_step, cut, lag_in_q, week_q),
        yq=yq,
        mq=mq.to(v.dtype),
        loc=loc,
        scale=scale,
        base_s=base_s,
        base_q=base_q,
        spread=spread,
        naive=naive,
        night_step=start_step + t0,
        jump=jump,
    )


def sample_tasks(
    values: torch.Tensor,
    mask: torch.Tensor,
    n_tasks: int,
    spec: FeatureSpec,
    k: int,
    horizon: int,
    start_step: int,
    generator: torch.Generator,
    cut_every: int = 1,
) -> TaskBatch:
    """``n_tasks`` random (series, cut) tasks from a training window.

    ``cut_every`` aligns cuts to the global grid (24 for hourly: cut at midnight, as the
    nightly job does).
    """
    n, T = values.shape
    low, high = earliest_cut(spec, k), T - horizon
    if low > high:
        raise ValueError(
            f"training window of {T} steps is too short for K={k}, horizon={horizon} and "
            f"seasonal lag {spec.period if spec.seasonal_lag else 0}: it needs at least "
            f"{low + horizon} steps; read more history days"
        )
    rows = torch.randint(0, n, (n_tasks,), generator=generator)
    # allowed cuts: columns in [low, high] whose global step is a multiple of cut_every
    first = low + (-(start_step + low)) % cut_every
    if first > high:
        raise ValueError(
            f"training window of {T} steps has no cut aligned to every {cut_every} steps "
            f"between {low} and {high}; read more history days"
        )
    n_cuts = (high - first) // cut_every + 1
    t0 = first + cut_every * torch.randint(0, n_cuts, (n_tasks,), generator=generator)
    return make_batch(values, mask, rows, t0, spec, k, horizon, start_step)
