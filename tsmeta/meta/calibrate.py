"""Calibration: the tail model of a cluster's out-of-sample z-scores, fitted on calibration
tasks (query points the adaptation never saw), and the residual scale that z divides by.

Pure computation on torch tensors; the tail model itself and how scoring reads it are
``tsmeta.scoring``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from tsmeta.forecaster import FeatureSpec, mlp
from tsmeta.meta.batched import adapt_predict
from tsmeta.meta.maml import Params, Rates, adapt_batch, is_ridge, predict_batch
from tsmeta.meta.tasks import TaskBatch, robust_sigma, sample_tasks
from tsmeta.scoring import (
    TailModel,
    fit_tail,
    fit_veto,
    fit_weekday_scale,
    fit_windows,
    neighbours,
    tail_probability,
    weekday_of,
)
from tsmeta.scoring.combine import NAIVE_VETO_SCALE
from tsmeta.scoring.level import fit_level_power, level_ratio

if TYPE_CHECKING:
    from tsmeta.meta.train import MetaConfig

__all__ = ["CALIBRATION_PARTS", "adapted_predictions", "calibrate", "calibrate_partial",
           "contrast_sigma", "jump_unit", "residual_sigma"]  # fmt: skip

# the parts of the residual calibration that an ablation can leave out (``calibrate``'s
# keywords; ``MetaConfig.without``)
CALIBRATION_PARTS = ("weekdays", "level", "empirical", "windows", "isolation", "onsets",
                     "veto")  # fmt: skip
# parts since removed (stored models' ``without`` may still name them)
REMOVED_PARTS = ("per_step", "spread", "drop")


def adapted_predictions(
    params: Params, batch: TaskBatch, steps: int, rates: Rates, trim: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(support, query) predictions after ``steps`` inner steps, every task at once
    (``trim``: the ridge head's refit without support outliers, ``MetaConfig.trim``)."""
    with torch.no_grad():
        if steps == 0:
            return mlp(params, batch.xs), mlp(params, batch.xq)
        if is_ridge(rates):  # leave-one-out support predictions, as nightly scoring has them
            return adapt_predict(params, batch.xs, batch.ys, batch.ms, batch.xq, steps, rates,
                                 trim=trim)  # fmt: skip
        fast = adapt_batch(params, batch, steps, rates)
        return predict_batch(fast, batch.xs), predict_batch(fast, batch.xq)


def residual_sigma(pred_s: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """(B,) each series' residual scale (normalised units): the robust scale of its support
    residuals (leave-one-out for the ridge head: 41 parameters fitted to 24 points leave
    almost none in sample)."""
    return robust_sigma(pred_s - batch.ys, batch.ms)


def contrast_sigma(resid: torch.Tensor, m: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """(B,) the robust scale of the local contrast of support residuals (B, K) whose
    observed points are ``m``: 1.4826 * median |r_t - mean(r_(t-1), r_(t+1))| (one
    neighbour at the ends and next to gaps), floored. The unit of
    ``tsmeta.scoring.isolation`` (via ``rel``): how much a series' points jump on
    their own, whatever its forecast misses (leave-one-out residuals for the ridge head)."""
    obs = m > 0
    x = torch.where(obs, resid, float("nan"))
    c = x - torch.stack(neighbours(x)).nanmean(0)  # NaN where no neighbour is observed
    ok = obs & ~c.isnan()
    return robust_sigma(torch.nan_to_num(c), ok.to(resid.dtype), floor)


def jump_unit(pred_s: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """(B,) the unit of isolation and onset: the series' own jumps over days
    (``TaskBatch.jump``), or the support residuals' (``contrast_sigma``) where the batch
    has none."""
    return batch.jump if batch.jump is not None else contrast_sigma(pred_s - batch.ys, batch.ms)


@dataclass
class _Sample:
    """A calibration sample's z-scores: signed (B, H, torch, cpu) and |z| (numpy), both
    divided by the level and per-weekday factors fitted on them; their mask; the
    series' residual scale over its jumps' (``rel``, or None) and what the tail stores."""

    signed: torch.Tensor
    z: np.ndarray
    observed: np.ndarray
    rel: torch.Tensor | None
    weekday_scale: tuple[float, ...] | None
    level_power: float | None


def _sample(
    params: Params, batch: TaskBatch, steps: int, rates: Rates, trim: float | None, jumps: bool,
    weekdays: bool, steps_per_day: int | None, level: bool = True,
) -> _Sample:  # fmt: skip
    """The out-of-sample z-scores of the calibration tasks after adapting each on its
    support, divided by the level factor, then by the per-weekday scales."""
    ps, pq = adapted_predictions(params, batch, steps, rates, trim)
    sigma = residual_sigma(ps, batch)
    rel = (sigma / jump_unit(ps, batch)).detach().cpu() if jumps else None
    signed = ((pq - batch.yq) / sigma[:, None]).detach().cpu()
    z = signed.abs().numpy()
    observed = (batch.mq > 0).cpu().numpy()
    level_power = None
    if level:
        ratio = level_ratio(batch.forecast(pq), batch.loc).detach().cpu()
        level_power = fit_level_power(z, ratio.numpy(), observed)
        if level_power:
            signed = signed / ratio.to(signed.dtype) ** level_power
            z = signed.abs().numpy()
    weekday_scale = None
    if weekdays and steps_per_day and batch.night_step is not None:
        weekday = weekday_of(batch.night_step.cpu().numpy(), steps_per_day)
        weekday_scale = fit_weekday_scale(z, observed, weekday)
        if weekday_scale is not None:
            factor = np.asarray(weekday_scale)[weekday][:, None]
            z = z / factor
            signed = signed / torch.as_tensor(factor, dtype=signed.dtype)
    return _Sample(signed, z, observed, rel, weekday_scale, level_power)


def _fit_tails(
    s: _Sample, keep: torch.Tensor, naive: torch.Tensor | None, empirical: bool, windows: bool,
    isolation: bool, onsets: bool,
) -> TailModel:  # fmt: skip
    """The tail model fitted on the sample's points ``keep``: the point tail, the window
    statistics' (``windows``), then the veto (with ``naive``)."""
    obs = torch.as_tensor(s.observed)
    point = replace(fit_tail(s.z[keep.numpy()], empirical=empirical),
                    weekday_scale=s.weekday_scale, level_power=s.level_power)  # fmt: skip
    if not windows:
        tail = point
    else:
        tail = replace(point, windows=fit_windows(s.signed, obs, point, rel=s.rel, fit=keep,
                                                  isolated=isolation, onsets=onsets))  # fmt: skip
    if naive is None:
        return tail
    log_p = torch.log(tail_probability(s.signed, obs, tail, rel=s.rel))
    # the unit is stored with the veto: scoring takes the same, whatever it is later
    knots, factor = fit_veto(log_p, naive, obs, fit=keep, scale=NAIVE_VETO_SCALE)
    return replace(tail, veto=knots, veto_factor=factor, veto_scale=NAIVE_VETO_SCALE)


def calibrate(
    params: Params,
    batch: TaskBatch,
    steps: int,
    rates: Rates,
    empirical: bool = True,
    windows: bool = True,
    veto: bool = True,
    isolation: bool = True,
    onsets: bool = True,
    trim: float | None = None,
    weekdays: bool = True,
    steps_per_day: int | None = None,
    level: bool = True,
) -> TailModel:
    """Tail model of out-of-sample z = r_query / sigma_support on calibration tasks
    (the query points are never part of the support the series adapts on).

    sigma is ``residual_sigma``'s, the robust scale of the support residuals.

    With ``level`` each point's scale first grows with its level (``fit_level_power``:
    counts are noisier when busy); with ``weekdays`` (and ``steps_per_day``) a factor per
    weekday of the scored night next (``fit_weekday_scale``). With ``windows`` the
    tails of sustained deviations are fitted on the same sample (``fit_windows``), and with
    ``isolation`` that of single points jumping away from both neighbours, with
    ``onsets`` that of the abrupt start or end of a sustained deviation. With
    ``veto`` (and a seasonal lag) the seasonal-naive veto is fitted last (``fit_veto``):
    a point the support's last same-phase value explains is not an anomaly, however badly
    the model forecast it. ``trim``: the adaptation's (``MetaConfig.trim``), as scoring
    adapts.
    """
    s = _sample(params, batch, steps, rates, trim, isolation or onsets, weekdays,
                steps_per_day, level)  # fmt: skip
    obs = torch.as_tensor(s.observed)
    naive = None if not veto or batch.naive is None else batch.naive.cpu()
    return _fit_tails(s, obs, naive, empirical, windows, isolation, onsets)


def calibrate_partial(
    params: Params, batch: TaskBatch, values: torch.Tensor, mask: torch.Tensor,
    spec: FeatureSpec, cfg: MetaConfig, rates: Rates, start_step: int, gen: torch.Generator,
    min_tasks: int = 200,
) -> TailModel | None:  # fmt: skip
    """The residual tail of series adapted from fewer than K support points.

    Fewer support points fit the support more closely than they forecast, so their
    z-scores have heavier tails: on the generator's data the full-support tail flagged
    3.6e-3 of such series' clean points at a configured 1e-3. Fitted on the calibration
    tasks whose support the data itself leaves between 3 and K - 1 points (real gaps and
    starts); where there are fewer than ``min_tasks`` of them, gaps are simulated by
    hiding each point with a probability drawn per series from U(0.05, 0.3).
    """
    n_sup = batch.ms.sum(1)
    keep = (n_sup >= 3) & (n_sup < cfg.k)
    if int(keep.sum()) < min_tasks:
        n = values.shape[0]
        hide = torch.rand(n, 1, generator=gen) * 0.25 + 0.05
        gappy = mask & (torch.rand(values.shape, generator=gen) >= hide).to(mask.device)
        batch = sample_tasks(values, gappy, cfg.calib_tasks, spec, cfg.k, cfg.horizon,
                             start_step, gen, cfg.cut_every)  # fmt: skip
        n_sup = batch.ms.sum(1)
        keep = (n_sup >= 3) & (n_sup < cfg.k)
    if int(keep.sum()) < min_tasks // 2:
        return None
    return calibrate(
        params,
        batch.select(keep),
        cfg.inner_steps,
        rates,
        trim=cfg.trim,
        steps_per_day=cfg.steps_per_day,
        **dict.fromkeys(cfg.without, False),
    )
