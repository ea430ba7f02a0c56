"""The forecaster as pure functions of a parameter dict, its features and normalisation.

Network (MAML paper's regression net): MLP, two hidden layers of ``hidden`` ReLU units,
one output: the normalised value at a target step.

Features of a target step ``t`` of a series with period ``p``:
  sin/cos of the phase ``2*pi*k*(t mod p)/p`` for k = 1..harmonics (phase is taken on the
  global grid, so the same hour means the same input on every night), the normalised
  value one period earlier (seasonal lag; 0 where unobserved) and a flag saying whether
  that lag was observed, and optionally the same for a second lag (``second_lag``: a
  week for hourly models of a daily period). Inputs may reach back further than the K
  support points; targets never do.

Normalisation: location and scale from the observed support points of each series, so
one initialisation serves series of any magnitude.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from tsmeta.scoring.statistics import sorted_columns

__all__ = [
    "FeatureSpec",
    "init_params",
    "mlp",
    "hidden_features",
    "masked_mse",
    "support_normalisation",
    "masked_mean_std",
    "build_features",
    "seasonal_lag",
    "lagged",
    "take_columns",
]


@dataclass(frozen=True)
class FeatureSpec:
    period: int  # phase period in steps (aperiodic series use the frequency's natural day)
    harmonics: int = 3
    seasonal_lag: bool = True
    # targets relative to the seasonal lag: the network forecasts the change from the
    # lagged input (with ``lag_periods`` > 1 the median of the same phase over those
    # periods: one unusual day, a holiday or an anomaly, is no base for the next), a learned
    # and adapted correction of a robust seasonal naive forecast
    relative_to_lag: bool = False
    # the base of relative targets is the lagged input (above); False: the single most
    # recent same-phase value, as models saved before it were trained
    median_base: bool = True
    # a second reference of the seasonal-naive veto (``TaskBatch.naive``): the value this
    # many steps before each forecast point (the most recent such one known at the cut);
    # 0: the support's last same phase alone. Hourly models of a daily period take the
    # week (168): a day the series repeated from a week before is not an anomaly either
    veto_lag: int = 0
    # the veto's deviations are also measured against the neighbours' (a point repeats its
    # reference only when its neighbours repeat theirs the same way; ``TaskBatch.naive``).
    # Models saved before it load with False and score as they were calibrated
    veto_neighbours: bool = True
    # with ``veto_neighbours``, a deviation less its neighbours' is in the series' own
    # jumps (``TaskBatch.jump``), not in the spread of the support's differences: a dip
    # of a few jumps is not explained by a reference whose days differ by far more.
    # Models saved before it load with False and score as they were calibrated
    veto_jumps: bool = True
    # a second lagged input: the value this many steps before each target (the most recent
    # such one known at the cut, as the seasonal lag) and its observed flag; 0: none.
    # Hourly models of a daily period take the week (168): from K = 48 points of a weekend
    # a daily model alone forecasts the Monday as another weekend day, where the week
    # before says what a Monday looks like (the window reads that week for the veto anyway)
    second_lag: int = 0
    # the lagged inputs (seasonal and second) are the median of the same phase over this
    # many of the most recent periods known at the cut (those inside the window; fewer
    # where the window is short): one unusual week, a holiday or an outage, is not read as
    # the series' normal the week after. 1: the single most recent value. The veto and the
    # residual spread keep the single most recent value. Models saved before it load with 1
    lag_periods: int = 1
    # the median reads up to this many periods further back and takes the ``lag_periods``
    # most recent observed ones: a period left out (a shared event, a holiday, a gap) is
    # replaced by an older one, so that the median keeps its odd count and still outvotes
    # one unusual period (of two, the mean takes either's anomaly in half). Models saved
    # before it load with 0
    lag_spare: int = 1

    def __post_init__(self) -> None:
        if self.relative_to_lag and not self.seasonal_lag:
            raise ValueError("relative_to_lag needs seasonal_lag=True (the lag is the base)")
        if self.veto_lag < 0 or (self.veto_lag and not self.seasonal_lag):
            raise ValueError(
                f"veto_lag must be 0 or a positive lag with seasonal_lag=True (the veto's "
                f"first reference is the seasonal lag), received {self.veto_lag}"
            )
        if self.lag_periods < 1:
            raise ValueError(f"lag_periods must be at least 1, received {self.lag_periods}")
        if self.lag_spare < 0:
            raise ValueError(f"lag_spare must be 0 or more, received {self.lag_spare}")
        if self.second_lag < 0:
            raise ValueError(
                f"second_lag must be 0 (none) or a positive number of steps, received "
                f"{self.second_lag}"
            )

    @property
    def spare(self) -> int:
        """The spare periods the lagged inputs' median reads (none for a single lag)."""
        return self.lag_spare if self.lag_periods > 1 else 0

    @property
    def n_features(self) -> int:
        return 2 * self.harmonics + (2 if self.seasonal_lag else 0) + (2 if self.second_lag else 0)

    def to_dict(self) -> dict:
        return asdict(self)


def init_params(
    n_in: int, hidden: int = 40, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Kaiming-uniform weights, as torch.nn.Linear initialises them."""

    def linear(fan_in: int, fan_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
        return w, b

    w1, b1 = linear(n_in, hidden)
    w2, b2 = linear(hidden, hidden)
    w3, b3 = linear(hidden, 1)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}


def hidden_features(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The two hidden layers: x (..., F) -> (..., hidden)."""
    h = torch.relu(x @ params["w1"] + params["b1"])
    return torch.relu(h @ params["w2"] + params["b2"])


def mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x (..., F) -> (...,)"""
    return (hidden_features(params, x) @ params["w3"] + params["b3"]).squeeze(-1)


def masked_mse(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, m: torch.Tensor
) -> torch.Tensor:
    """Mean squared error over observed points; x (N, F), y (N,), m (N,) float 0/1."""
    err = (mlp(params, x) - y) ** 2 * m
    return err.sum() / m.sum().clamp_min(1.0)


def support_normalisation(
    y: torch.Tensor, m: torch.Tensor, rel_floor: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-series location and scale from observed support points.

    y (B, K), m (B, K) float -> loc (B,), scale (B,). The scale is floored at ``rel_floor``
    of |loc| (and an absolute 1e-6) so near-constant series do not blow up residuals.
    """
    loc, std = masked_mean_std(y, m)
    scale = torch.maximum(std, rel_floor * loc.abs()).clamp_min(1e-6)
    return loc, scale


def masked_mean_std(y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and (population) std of the points of y (B, N) where m (B, N) is set;
    y must be finite where m is not (NaNs there: zero them first)."""
    w = m.to(y.dtype)
    cnt = w.sum(-1).clamp_min(1.0)
    loc = (y * w).sum(-1) / cnt
    var = (((y - loc[:, None]) ** 2) * w).sum(-1) / cnt
    return loc, var.sqrt()


def build_features(
    spec: FeatureSpec,
    vnorm: torch.Tensor,
    observed: torch.Tensor,
    cols: torch.Tensor,
    start_step: int,
    cut: torch.Tensor | None = None,
    lag: tuple[torch.Tensor, torch.Tensor] | None = None,
    second: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Features for target columns of normalised series.

    vnorm (B, T) normalised values (anything where unobserved), observed (B, T) bool,
    cols (B, N) int target column indices (or (1, N) with ``cut`` (1,): the same in every
    row, as :func:`lagged` takes them), start_step the global step of column 0.
    ``cut`` (B,) is the forecast origin: the seasonal lag of a target at or after it is
    the most recent same-phase value before it (one period back on the first period of
    the horizon, two on the second, ...), so a horizon longer than a period never reads
    a value it is forecasting. ``lag``: :func:`seasonal_lag` of the same columns when the
    caller has it already; ``second``: :func:`lagged` of ``spec.second_lag`` likewise.
    Returns (B, N, F).
    """
    phase = ((cols + start_step) % spec.period).to(vnorm.dtype) * (2 * math.pi / spec.period)
    k = torch.arange(1, spec.harmonics + 1, dtype=vnorm.dtype, device=vnorm.device)
    ang = phase[..., None] * k  # (B, N, H), or (1, N, H): computed once for every row
    rows = (vnorm.shape[0], -1, -1)
    parts = [torch.sin(ang).expand(rows), torch.cos(ang).expand(rows)]
    if spec.seasonal_lag:
        lag_val, lag_obs = (
            lag
            if lag is not None
            else lagged(spec.period, vnorm, observed, cols, cut, spec.lag_periods, spec.spare)
        )
        parts += [lag_val[..., None], lag_obs.to(vnorm.dtype)[..., None]]
    if spec.second_lag:
        lag_val, lag_obs = (
            second
            if second is not None
            else lagged(spec.second_lag, vnorm, observed, cols, cut, spec.lag_periods, spec.spare)
        )
        parts += [lag_val[..., None], lag_obs.to(vnorm.dtype)[..., None]]
    return torch.cat(parts, dim=-1)


def seasonal_lag(
    spec: FeatureSpec,
    vnorm: torch.Tensor,
    observed: torch.Tensor,
    cols: torch.Tensor,
    cut: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, observed) of each target's most recent same-phase point known at ``cut``
    (the reference of the veto and the residual spread; the input is ``lag_periods``'
    median, see :func:`build_features`).

    Shapes as :func:`build_features`; the value is 0 where that point is unobserved or
    before the window.
    """
    return lagged(spec.period, vnorm, observed, cols, cut)


def lagged(
    lag: int,
    vnorm: torch.Tensor,
    observed: torch.Tensor,
    cols: torch.Tensor,
    cut: torch.Tensor | None = None,
    periods: int = 1,
    spare: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, observed) of the point a multiple of ``lag`` steps before each target: one
    ``lag`` back, or with ``cut`` the most recent such point before it (a target ``lag`` or
    more past the cut reads two lags back, ...). 0 / False before the window.

    ``periods`` > 1: the median of that many such points, the most recent first (of those
    observed; the mean of the middle two for an even count), observed when any is.
    ``spare``: up to that many older periods stand in, in order, for unobserved ones (the
    median is of the ``periods`` most recent observed points among ``periods + spare``).

    ``cols`` (1, N) with ``cut`` (1,) stands for every row of ``vnorm`` (a night's batch,
    every series cut at one step): its lags are taken as column slices."""
    periods_back = 1
    if cut is not None:
        periods_back = 1 + (cols - cut[:, None]).clamp_min(0) // lag
    vals, obss = [], []
    for extra in range(periods + (spare if periods > 1 else 0)):
        lag_cols = cols - lag * (periods_back + extra)
        if cols.shape[0] == 1:  # the same columns in every row: slices, or one index
            val, ob = take_columns(vnorm, observed, lag_cols[0])
        else:
            safe = lag_cols.clamp_min(0)
            val = torch.gather(vnorm, 1, safe)
            ob = torch.gather(observed, 1, safe) & (lag_cols >= 0)
        vals.append(val)
        obss.append(ob)
    zero = torch.zeros((), dtype=vnorm.dtype)
    if periods == 1:
        return torch.where(obss[0], vals[0], zero), obss[0].clone()
    if len(obss) > periods:  # a spare is read only where fewer recent ones were observed
        seen = torch.zeros_like(obss[0], dtype=torch.int32)
        for i, o in enumerate(obss):
            obss[i] = o & (seen < periods)
            seen = seen + o
    obs = torch.stack(obss)  # (P, B, N)
    inf = torch.full((), float("inf"), dtype=vnorm.dtype)
    # the periods sorted elementwise (torch.sort along the short leading axis: 1.45x slower
    # at 5 minutes; the same values)
    ranked = sorted_columns(torch.where(o, v, inf) for o, v in zip(obss, vals, strict=True))
    count = obs.sum(0)  # (B, N) observed points among the P
    lo = torch.gather(ranked, 0, ((count - 1).clamp_min(0) // 2)[None]).squeeze(0)
    hi = torch.gather(ranked, 0, (count // 2).clamp_max(len(obss) - 1)[None]).squeeze(0)
    hi = torch.where(count % 2 == 1, lo, hi)
    any_obs = count > 0
    return torch.where(any_obs, (lo + hi) / 2, zero), any_obs


def take_columns(
    x: torch.Tensor, observed: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, observed & inside) at the same columns ``cols`` (N,) of every row of x (B, T),
    a column before the window (negative) unobserved: the slice where the columns are one
    contiguous run inside the window (no copy, no index read), else ``index_select``; the
    same values as ``torch.gather`` with the columns repeated in every row."""
    n = cols.numel()
    if n:
        first, last = int(cols[0]), int(cols[-1])
        if first >= 0 and last - first == n - 1 and bool((cols.diff() == 1).all()):
            return x[:, first : last + 1], observed[:, first : last + 1]
    safe = cols.clamp_min(0)
    return x.index_select(1, safe), observed.index_select(1, safe) & (cols >= 0)
