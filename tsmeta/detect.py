"""Nightly scoring: adapt every series of a chunk at once, forecast the day, score residuals.

For each series the cluster's initialisation takes ``inner_steps`` gradient steps on the K
points before the scored day (all series of a chunk in one batched computation,
``tsmeta.meta.batched``), then forecasts the day. The residual of each observed point is
divided by the series' robust support-residual scale, giving a z-score whose distribution
on held-out data the cluster's tail model describes (``tsmeta.calibration``); the score is
``1 - two-sided tail probability`` and a point is flagged when that tail probability is
below the false-alarm rate, with its direction (the residual's sign) and a severity.

Every series says how it was forecast (``BASIS``): from all K points, from fewer (cold
start, gaps), from the base forecast when adaptation diverged, or not at all (fewer than
``MIN_SUPPORT_POINTS`` recent points). Series of a cluster without a model never reach
this module: the nightly job counts and logs them (``tsmeta.jobs.score_night``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tsmeta.calibration import two_sided_tail
from tsmeta.meta.baselines import Adapted
from tsmeta.meta.tasks import earliest_cut, make_batch
from tsmeta.meta.train import MetaModel, robust_sigma

__all__ = ["ScoredDay", "score_day", "severity_of", "MIN_SUPPORT_POINTS", "BASIS", "SEVERITY"]

MIN_SUPPORT_POINTS = 3  # fewer observed support points: the series is reported unscored
# how each series' forecast was made (ScoredDay.basis)
BASIS = (
    "adapted",  # adapted from all K support points
    "partial",  # cold start / gaps: adapted from fewer than K (but >= MIN_SUPPORT_POINTS) points
    "fallback",  # adaptation diverged on this support: the base forecast (seasonal naive / mean)
    "unscored",  # fewer than MIN_SUPPORT_POINTS observed support points: no forecast
)
_ADAPTED, _PARTIAL, _FALLBACK, _UNSCORED = range(len(BASIS))
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

    @property
    def score(self) -> np.ndarray:
        """1 - tail probability, in [0, 1] (float64: strong anomalies stay distinct)."""
        return 1.0 - self.tail

    @property
    def scored(self) -> np.ndarray:
        """(n,) False where the support had too few observations to forecast."""
        return self.basis != _UNSCORED

    def basis_counts(self) -> dict[str, int]:
        counts = np.bincount(self.basis, minlength=len(BASIS))
        return {name: int(c) for name, c in zip(BASIS, counts, strict=True)}

    def flagged_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(series row, horizon index) of every flagged point."""
        return np.nonzero(self.flag)


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
) -> ScoredDay:
    """Score the last ``model.config.horizon`` columns of a window of many series.

    values (n, T) float (NaN where unobserved), mask (n, T) bool. The window must hold K
    points (plus one period for the seasonal lag) before the scored day. Every series
    gets a ``basis`` saying how its forecast was made (see ``BASIS``); missing points in
    the scored day are left unscored (NaN), never flagged.
    """
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate must be in (0, 1), received {false_alarm_rate}")
    cfg, spec = model.config, model.spec
    n, T = values.shape
    H = cfg.horizon
    t0 = T - H
    need = earliest_cut(spec, cfg.k)
    if t0 < need:
        raise ValueError(
            f"window of {T} steps is too short: scoring {H} steps with K={cfg.k} and a seasonal "
            f"lag of {spec.period} needs {need + H}; read more history"
        )
    z_alpha = model.calibration.threshold(false_alarm_rate)
    out = {
        k: np.empty((n, H), dtype=np.float32) for k in ("forecast", "lower", "upper", "residual")
    }
    tail_out = np.full((n, H), np.nan)
    flag = np.zeros((n, H), dtype=bool)
    support_points = np.zeros(n, dtype=np.int32)
    basis = np.zeros(n, dtype=np.int8)
    vals_t = torch.as_tensor(values, dtype=torch.float32)
    mask_t = torch.as_tensor(mask, dtype=torch.bool)
    forecaster = Adapted.from_model(model)
    with torch.no_grad():
        for first in range(0, n, chunk_series):
            rows = torch.arange(first, min(n, first + chunk_series))
            cut = torch.full((len(rows),), t0, dtype=torch.long)
            batch = make_batch(vals_t, mask_t, rows, cut, spec, cfg.k, H, start_step)
            pred_s, pred_q, fell_back = forecaster.predict_guarded(batch)  # normalised
            sigma = robust_sigma(pred_s - batch.ys, batch.ms)  # (B,) normalised units
            scale = batch.scale[:, None]
            forecast = batch.forecast(pred_q)
            half = scale * sigma[:, None] * z_alpha
            actual = vals_t[rows, t0:]
            resid = actual - forecast
            z = (resid.abs() / (scale * sigma[:, None])).double().numpy()
            tail = two_sided_tail(z, model.calibration)
            n_support = batch.ms.sum(1).to(torch.int32)
            ok_series = n_support >= MIN_SUPPORT_POINTS
            obs = (mask_t[rows, t0:] & ok_series[:, None]).numpy()
            sl = slice(first, first + len(rows))
            out["forecast"][sl] = forecast.numpy()
            out["lower"][sl] = (forecast - half).numpy()
            out["upper"][sl] = (forecast + half).numpy()
            out["residual"][sl] = np.where(obs, resid.numpy(), np.nan)
            tail_out[sl] = np.where(obs, tail, np.nan)
            flag[sl] = obs & (tail < false_alarm_rate)
            support_points[sl] = n_support.numpy()
            b = np.where(n_support.numpy() < cfg.k, _PARTIAL, _ADAPTED)
            b = np.where(fell_back.numpy(), _FALLBACK, b)
            basis[sl] = np.where(ok_series.numpy(), b, _UNSCORED)
    return ScoredDay(
        series_ids=series_ids,
        cols=np.arange(t0, T),
        value=values[:, t0:],
        observed=mask[:, t0:],
        tail=tail_out,
        flag=flag,
        support_points=support_points,
        basis=basis,
        **out,
    )
