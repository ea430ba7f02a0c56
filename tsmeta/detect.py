"""Nightly scoring: adapt every series of a chunk at once, forecast the day, score residuals.

For each series the cluster's initialisation takes ``inner_steps`` gradient steps on the K
points before the scored day (all series of a chunk in one batched computation,
``tsmeta.meta.batched``), then forecasts the day. The residual of each observed point is
divided by the series' robust support-residual scale, giving a z-score whose distribution
on out-of-sample data the cluster's tail model describes (``tsmeta.scoring``). A point's
tail probability is the calibrated smallest of its own and those of the windows around it
(the median z of 5 and of 12 steps: a level shift or a stuck value whose single points stay
inside the band is still caught, while one spike never flags its neighbours) and of its
isolation (its jump away from both neighbours, in units of the series' own jumps: a spike
is caught where the forecast was off for hours anyway); the score
is ``1 - tail probability`` and a point is flagged when that tail probability is below the
false-alarm rate, with its direction (the residual's sign) and a severity. The band
(lower, upper) is where an isolated point would be flagged, so a flagged point inside it
is part of a sustained deviation. A point outside it is not flagged when the support's
last same-phase value explains it, or for hourly models of a daily period the value a
week before (the seasonal-naive veto, ``TailModel.veto``: the forecast missed what the
series repeated from one period, or one week, before).

Every series says how it was forecast (``BASIS``): from all K points, from fewer (cold
start, gaps), from the base forecast when adaptation failed or diverged, or not at all (fewer than
``MIN_SUPPORT_POINTS`` recent points). A series that observed under half of its K recent
points adapts from the K points one period earlier where it has them
(``tasks.support_shift``: a day of missing data leaves it scored). Series of a cluster without a model never reach
this module: the nightly job counts and logs them (``tsmeta.jobs.score_night``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from tsmeta.forecaster import masked_mean_std
from tsmeta.meta.baselines import Adapted
from tsmeta.meta.calibrate import jump_unit, residual_sigma
from tsmeta.meta.tasks import earliest_cut, make_batch, window_reach
from tsmeta.meta.train import MetaModel
from tsmeta.scoring import tail_probability, weekday_of
from tsmeta.scoring.level import level_factor

__all__ = ["ScoredDay", "score_day", "severity_of", "surprise_of", "MIN_SUPPORT_POINTS", "BASIS",
           "BASIS_MEANING", "NOT_SCORED", "SEVERITY"]  # fmt: skip
MAX_SURPRISE = 300.0  # -log10 of the smallest tail probability kept (float64 tails floor there)

MIN_SUPPORT_POINTS = 3  # fewer observed support points: the series is reported unscored
# how each series' forecast was made (ScoredDay.basis), in the words the logs, the report
# and the plots use. "constant": a forecast adapted to a flatline (a stuck sensor, an
# outage filled with a constant) says nothing about a normal night, so the night is not
# scored (the flatline itself was scored, and flagged, on the night it began).
BASIS_MEANING = {
    "adapted": "from all K recent points",
    "partial": "cold start or gaps: from fewer than K recent points",
    "fallback": "adaptation failed or diverged: the base forecast (seasonal naive or mean) is used",
    "unscored": f"fewer than {MIN_SUPPORT_POINTS} of the recent points (or of the period's "
    "before them) were observed",
    "constant": "the recent points are stuck at one value after a varying period",
}
BASIS = tuple(BASIS_MEANING)
NOT_SCORED = ("unscored", "constant")  # bases whose series get no forecast judged that night
_ADAPTED, _PARTIAL, _FALLBACK, _UNSCORED, _CONSTANT = range(len(BASIS))
STUCK_SHARE = 0.75  # support points at one value (the previous period varying): constant
# a flagged point's severity by its tail probability p against the false-alarm rate a
SEVERITY = ("minor", "major", "critical")  # p < a, p < a / 10, p < a / 100


@dataclass
class ScoredDay:
    """Scores of the last ``horizon`` columns of a window; arrays (n, H) unless noted."""

    series_ids: np.ndarray  # (n,)
    cols: np.ndarray  # (H,) column indices in the window
    value: np.ndarray
    observed: np.ndarray  # bool
    forecast: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    residual: np.ndarray
    tail: np.ndarray  # float64 two-sided tail probability of the residual (NaN: not scored)
    flag: np.ndarray  # bool
    support_points: np.ndarray  # (n,) observed points among the K support points
    basis: np.ndarray  # (n,) index into BASIS
    # bool: a flagged point more surprising than any of its series' points since the start
    # of the night before (``tsmeta.jobs.history``); None: not judged (no residual history)
    alert: np.ndarray | None = None
    # the residual scale's factor of each point for noise that grows with the level
    # (``tsmeta.scoring.level``; float32); None: 1 everywhere (the cluster's tails have none)
    level: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray:
        """1 - tail probability, in [0, 1] (float64: strong anomalies stay distinct)."""
        return 1.0 - self.tail

    @property
    def scored(self) -> np.ndarray:
        """(n,) False where the support could not be forecast from (too few points, constant)."""
        return (self.basis != _UNSCORED) & (self.basis != _CONSTANT)

    def basis_counts(self) -> dict[str, int]:
        counts = np.bincount(self.basis, minlength=len(BASIS))
        return {name: int(c) for name, c in zip(BASIS, counts, strict=True)}

    def flagged_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(series row, horizon index) of every flagged point."""
        return np.nonzero(self.flag)


def surprise_of(tail: np.ndarray) -> np.ndarray:
    """-log10 of tail probabilities, in [0, MAX_SURPRISE] (NaN where not scored): 3 means a
    residual this large comes one night-point in a thousand on normal data. Unlike the
    score (1 - p, which rounds to 1.0 below p ~ 1e-16) it keeps ranking the strongest."""
    p = np.asarray(tail, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(-np.log10(np.maximum(p, 10.0**-MAX_SURPRISE)), MAX_SURPRISE) + 0.0


def severity_of(tail: np.ndarray, false_alarm_rate: float) -> np.ndarray:
    """Index into SEVERITY of flagged points' tail probabilities."""
    return (tail < false_alarm_rate / 10).astype(np.int8) + (tail < false_alarm_rate / 100)


def score_day(
    values: np.ndarray,
    mask: np.ndarray,
    series_ids: np.ndarray,
    start_step: int,
    model: MetaModel,
    false_alarm_rate: float,
    chunk_series: int = 8192,
    device: str | torch.device = "cpu",
    causal: bool = False,
) -> ScoredDay:
    """Score the last ``model.config.horizon`` columns of a window of many series.

    values (n, T) float (NaN where unobserved), mask (n, T) bool. The window must hold K
    points (plus one period for the seasonal lag) before the scored day. Every series
    gets a ``basis`` saying how its forecast was made (see ``BASIS``); missing points in
    the scored day are left unscored (NaN), never flagged. ``device``: where the whole
    chunk is computed (features, adaptation, residual scales, tail probabilities, flags;
    ``"cuda"`` on a GPU worker); the returned arrays are numpy, on the host.

    ``causal``: each point's score reads no point after it (NAB's rule, intraday runs):
    the forecast and the residual scale come from the support before the night anyway;
    the window medians trail the point instead of centring on it, isolation and onset
    (which read the next points) are left out, and the veto's reference is the point's
    own seasonal-naive deviation, without its neighbours'.
    """
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), received {false_alarm_rate}")
    cfg, spec = model.config, model.spec
    if causal and spec.veto_neighbours:
        spec = replace(spec, veto_neighbours=False)
    n, T = values.shape
    H = cfg.horizon
    t0 = T - H
    need = earliest_cut(spec, cfg.k)
    if t0 < need:
        raise ValueError(
            f"window of {T} steps is too short: scoring {H} steps with K={cfg.k}, whose inputs "
            f"reach {need - cfg.k} steps further back (seasonal and week lags), needs "
            f"{need + H}; read more history"
        )
    dev = torch.device(device)
    # the leading columns no feature reads are left out (a night's window is as long as its
    # longest-reaching model needs: weekly lags read a week that daily ones never look at)
    # (the median of the lagged inputs reads up to ``window_reach``, where the window has it)
    skip = max(0, t0 - window_reach(spec, cfg.k, H))
    vals_all = torch.as_tensor(values[:, skip:], dtype=torch.float32)
    mask_all = torch.as_tensor(mask[:, skip:], dtype=torch.bool)
    t_in, step_in = t0 - skip, start_step + skip  # the scored day's first column, column 0's step
    scorer = _ChunkScorer.of(model, spec, false_alarm_rate, start_step + t0, dev, causal)
    out = {
        k: np.empty((n, H), dtype=np.float32) for k in ("forecast", "lower", "upper", "residual")
    }
    tail_out = np.full((n, H), np.nan)
    flag = np.zeros((n, H), dtype=bool)
    support_points = np.zeros(n, dtype=np.int32)
    basis = np.zeros(n, dtype=np.int8)
    level = None
    with torch.no_grad():
        for first in range(0, n, chunk_series):
            sl = slice(first, min(n, first + chunk_series))
            vals_t = vals_all[sl].to(dev, non_blocking=True)
            mask_t = mask_all[sl].to(dev, non_blocking=True)
            c = scorer.score(vals_t, mask_t, t_in, step_in)
            # everything is computed where the chunk lives; one transfer per output array
            out["forecast"][sl] = c.forecast.cpu().numpy()
            out["lower"][sl] = (c.forecast - c.half).cpu().numpy()
            out["upper"][sl] = (c.forecast + c.half).cpu().numpy()
            out["residual"][sl] = torch.where(c.obs, c.resid, float("nan")).cpu().numpy()
            tail_out[sl] = c.tail.cpu().numpy()
            flag[sl] = (c.obs & (c.tail < false_alarm_rate)).cpu().numpy()
            support_points[sl] = c.n_support.cpu().numpy()
            basis[sl] = c.basis.cpu().numpy()
            if c.grow is not None:
                if level is None:
                    level = np.ones((n, H), dtype=np.float32)
                level[sl] = c.grow.cpu().numpy()
    return ScoredDay(
        series_ids=series_ids,
        cols=np.arange(t0, T),
        value=values[:, t0:],
        observed=mask[:, t0:],
        tail=tail_out,
        flag=flag,
        support_points=support_points,
        basis=basis,
        level=level,
        **out,
    )


@dataclass
class _Chunk:
    """One chunk's results, on the chunk's device; (B, H) unless noted."""

    forecast: torch.Tensor
    half: torch.Tensor  # the band's half width: where an isolated point would be flagged
    resid: torch.Tensor
    obs: torch.Tensor  # bool: observed points of series that are scored
    tail: torch.Tensor  # float64, NaN where not observed
    n_support: torch.Tensor  # (B,)
    basis: torch.Tensor  # (B,) index into BASIS
    grow: torch.Tensor | None = None  # the level factor of each point (None: 1)


@dataclass
class _ChunkScorer:
    """What every chunk of one ``score_day`` call shares: the adapted forecaster, the tails
    of full and partial supports with their thresholds and the factor of the night's
    weekday on their residual scales, where the model has one (every row of a window is
    cut at the same step, so one weekday for the whole call)."""

    spec: object  # FeatureSpec
    k: int
    horizon: int
    forecaster: Adapted
    tails: tuple  # (full, partial) TailModel
    z_alpha: tuple[float, float]
    weekday: tuple[float, float]  # the night's weekday factor of each tail
    jumps: bool  # a tail has isolation or onset: their unit is needed
    causal: bool

    @classmethod
    def of(cls, model: MetaModel, spec: object, false_alarm_rate: float, night_step: int,
           dev: torch.device, causal: bool) -> _ChunkScorer:  # fmt: skip
        cfg = model.config
        full_tail = model.calibration
        part_tail = model.partial_calibration or full_tail  # fewer than K support points
        tails = (full_tail, part_tail)
        z_alpha = (full_tail.threshold(false_alarm_rate), part_tail.threshold(false_alarm_rate))
        weekday = weekday_of(night_step, cfg.steps_per_day) if cfg.steps_per_day else 0
        jumps = any(t.windows is not None and (t.windows.isolation is not None or
                                               t.windows.onset is not None)
                    for t in tails)  # fmt: skip
        return cls(spec, cfg.k, cfg.horizon, Adapted.from_model(model).to(dev), tails, z_alpha,
                   tuple(t.weekday(weekday) for t in tails), jumps,
                   causal)  # fmt: skip

    @property
    def powers(self) -> tuple[float, float]:
        """The level power of each tail (0: its scale does not grow with the level)."""
        return tuple(t.level_power or 0.0 for t in self.tails)

    def score(self, vals_t: torch.Tensor, mask_t: torch.Tensor, t_in: int, step_in: int) -> _Chunk:
        """Adapt, forecast and score one chunk of series whose night starts at column ``t_in``
        (column 0 is global grid step ``step_in``)."""
        spec, k, dev = self.spec, self.k, vals_t.device
        full_tail, part_tail = self.tails
        rows = torch.arange(vals_t.shape[0], device=dev)
        cut = torch.full((len(rows),), t_in, dtype=torch.long, device=dev)
        batch = make_batch(vals_t, mask_t, rows, cut, spec, k, self.horizon, step_in)
        pred_s, pred_q, fell_back = self.forecaster.predict_guarded(batch)  # normalised
        n_support = batch.ms.sum(1).to(torch.int32)
        sigma = residual_sigma(pred_s, batch)  # (B,) normalised units
        # (B,) the unit of isolation and onset, where a tail has either (older ones do not)
        rel = sigma / jump_unit(pred_s, batch) if self.jumps else None
        flat = _constant_support(vals_t, mask_t, t_in, k, spec.period if spec.seasonal_lag else 0)
        ok_series = (n_support >= MIN_SUPPORT_POINTS) & ~flat
        partial = (n_support < k)[:, None]
        base_unit = batch.scale[:, None] * sigma[:, None]
        unit = base_unit * torch.where(partial, self.weekday[1], self.weekday[0])
        forecast = batch.forecast(pred_q)
        grow = None
        if self.powers[0] or self.powers[1]:  # noise that grows with the level
            power = torch.where(partial, self.powers[1], self.powers[0])
            grow = level_factor(forecast, batch.loc, power).to(unit.dtype)
            unit = unit * grow
        half = unit * torch.where(partial, self.z_alpha[1], self.z_alpha[0])
        resid = vals_t[:, t_in:] - forecast
        obs = mask_t[:, t_in:] & ok_series[:, None]
        z = torch.where(obs, resid / unit, torch.zeros((), dtype=resid.dtype, device=dev))
        naive = batch.naive  # seasonal-naive deviations: the veto's (None: no lag)
        tail = tail_probability(z, obs, full_tail, naive, rel, self.causal)  # float64, on device
        if part_tail is not full_tail and bool(partial.any()):  # only those rows again
            part_rows = partial[:, 0].nonzero().squeeze(1)
            tail[part_rows] = tail_probability(z[part_rows], obs[part_rows], part_tail,
                                               None if naive is None else naive[part_rows],
                                               None if rel is None else rel[part_rows],
                                               self.causal)  # fmt: skip
        tail = torch.where(obs, tail, torch.full((), float("nan"), dtype=tail.dtype))
        b = torch.where(n_support < k, _PARTIAL, _ADAPTED)
        b = torch.where(fell_back, _FALLBACK, b)
        b = torch.where(n_support >= MIN_SUPPORT_POINTS, b, _UNSCORED)
        b = torch.where(flat & (n_support >= MIN_SUPPORT_POINTS), _CONSTANT, b)
        return _Chunk(forecast, half, resid, obs, tail, n_support, b, grow)


def _stuck_share(v: torch.Tensor, m: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """(B,) share of the observed points of v (B, N) within ``tol`` (B,) of their median."""
    x = torch.where(m, v, torch.full((), float("nan"), dtype=v.dtype))
    med = torch.nanmedian(x, dim=1).values
    near = ((x - med[:, None]).abs() <= tol[:, None]) & m
    return near.sum(1) / m.sum(1).clamp_min(1)


def _constant_support(
    values: torch.Tensor, mask: torch.Tensor, t0: int, k: int, before: int
) -> torch.Tensor:
    """(B,) bool: at least ``STUCK_SHARE`` of the K points before ``t0`` sit at one value
    (a stuck sensor, an outage filled with a constant) while the ``before`` points
    preceding them varied. Series that are constant (or step-like) throughout never are."""
    if before <= 0 or t0 - k - before < 0:
        return torch.zeros(values.shape[0], dtype=torch.bool, device=values.device)
    sv, sm = values[:, t0 - k : t0], mask[:, t0 - k : t0]
    ev, em = values[:, t0 - k - before : t0 - k], mask[:, t0 - k - before : t0 - k]
    _, ear_std = masked_mean_std(torch.nan_to_num(ev), em)
    tol = 1e-3 * ear_std
    return (
        (sm.sum(1) >= MIN_SUPPORT_POINTS) & (em.sum(1) >= MIN_SUPPORT_POINTS) & (ear_std > 0)
        & (_stuck_share(sv, sm, tol) >= STUCK_SHARE) & (_stuck_share(ev, em, tol) < 0.5)
    )  # fmt: skip
