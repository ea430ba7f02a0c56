"""Nightly scoring: adapt every series of a chunk at once, forecast the day, score residuals.

For each series the cluster's initialisation takes ``inner_steps`` gradient steps on the K
points before the scored day (all series in one ``vmap``), then forecasts the day. The
residual of each observed point is divided by the series' robust support-residual scale,
giving a z-score whose distribution on held-out data the cluster's tail model describes
(``tsmeta.calibration``); the score is ``1 - two-sided tail probability`` and a point is
flagged when that tail probability is below the false-alarm rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tsmeta.calibration import two_sided_tail
from tsmeta.meta.baselines import Adapted
from tsmeta.meta.tasks import earliest_cut, make_batch
from tsmeta.meta.train import MetaModel, robust_sigma

__all__ = ["ScoredDay", "score_day", "MIN_SUPPORT_POINTS"]

MIN_SUPPORT_POINTS = 3  # fewer observed support points: the series is reported unscored


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
    score: np.ndarray  # in [0, 1]
    flag: np.ndarray  # bool
    scored: np.ndarray  # (n,) bool: False when the support had too few observations

    def flagged_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(series row, horizon index) of every flagged point."""
        return np.nonzero(self.flag)


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
    points (plus one period for the seasonal lag) before the scored day.
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
        k: np.empty((n, H), dtype=np.float32)
        for k in ("forecast", "lower", "upper", "residual", "score")
    }
    flag = np.zeros((n, H), dtype=bool)
    scored = np.zeros(n, dtype=bool)
    vals_t = torch.as_tensor(values, dtype=torch.float32)
    mask_t = torch.as_tensor(mask, dtype=torch.bool)
    forecaster = Adapted.from_model(model)
    with torch.no_grad():
        for first in range(0, n, chunk_series):
            rows = torch.arange(first, min(n, first + chunk_series))
            cut = torch.full((len(rows),), t0, dtype=torch.long)
            batch = make_batch(vals_t, mask_t, rows, cut, spec, cfg.k, H, start_step)
            pred_s, pred_q = forecaster.predict(batch)  # (B, K), (B, H) normalised
            sigma = robust_sigma(pred_s - batch.ys, batch.ms)  # (B,) normalised units
            loc, scale = batch.loc[:, None], batch.scale[:, None]
            forecast = loc + scale * pred_q
            half = scale * sigma[:, None] * z_alpha
            actual = vals_t[rows, t0:]
            resid = actual - forecast
            z = resid.abs() / (scale * sigma[:, None])
            tail = torch.from_numpy(two_sided_tail(z.numpy(), model.calibration)).float()
            ok_series = batch.ms.sum(1) >= MIN_SUPPORT_POINTS
            obs = mask_t[rows, t0:] & ok_series[:, None]
            sl = slice(first, first + len(rows))
            out["forecast"][sl] = forecast.numpy()
            out["lower"][sl] = (forecast - half).numpy()
            out["upper"][sl] = (forecast + half).numpy()
            out["residual"][sl] = torch.where(obs, resid, torch.nan).numpy()
            out["score"][sl] = torch.where(obs, 1.0 - tail, torch.nan).numpy()
            flag[sl] = (obs & (tail < false_alarm_rate)).numpy()
            scored[sl] = ok_series.numpy()
    return ScoredDay(
        series_ids=series_ids,
        cols=np.arange(t0, T),
        value=values[:, t0:],
        observed=mask[:, t0:],
        flag=flag,
        scored=scored,
        **out,
    )
