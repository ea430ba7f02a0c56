"""Forecasters behind one interface, so meta-learning is compared like for like.

``predict(batch)`` returns the normalised (support, query) predictions of every task of a
:class:`TaskBatch` after the forecaster's own use of the K support points:

* :class:`Adapted`: a learned initialisation (MAML, FOMAML, Meta-SGD, or the pre-trained
  transfer-learning baseline) fine-tuned with its inner steps; ``steps=0`` is the
  unadapted initialisation.
* :class:`Scratch`: a freshly initialised network trained on the K points only.
* :class:`SeasonalNaive`: the value one period earlier (the seasonal-lag feature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from tsmeta.forecaster import FeatureSpec, init_params, mlp
from tsmeta.meta.batched import adapt_predict
from tsmeta.meta.maml import Params, Rates, is_ridge
from tsmeta.meta.tasks import TaskBatch
from tsmeta.meta.train import MetaModel

__all__ = ["Forecaster", "Adapted", "Scratch", "SeasonalNaive", "query_mse"]


class Forecaster(Protocol):
    name: str

    def predict(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Adapted:
    params: Params
    rates: Rates
    steps: int
    name: str = "adapted"
    trim: float | None = None  # the ridge head's refit without support outliers (MetaConfig)

    @classmethod
    def from_model(
        cls, model: MetaModel, steps: int | None = None, name: str | None = None
    ) -> Adapted:
        steps = model.config.inner_steps if steps is None else steps
        return cls(model.params, model.rates, steps,
                   name or f"{model.config.algorithm}-{steps}step", model.config.trim)  # fmt: skip

    def to(self, device: torch.device | str) -> Adapted:
        """The same forecaster with its parameters (and learned rates) on ``device``."""
        rates = self.rates
        if isinstance(rates, dict):
            rates = {k: v.to(device) if torch.is_tensor(v) else v for k, v in rates.items()}
        params = {k: v.to(device) for k, v in self.params.items()}
        return Adapted(params, rates, self.steps, self.name, self.trim)

    def predict(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        ps, pq, _ = self.predict_guarded(batch)
        return ps, pq

    def predict_guarded(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(support, query) predictions, and which series fell back to the base forecast.

        A few gradient steps can diverge on an unusual support set (seen on M4: one series
        in a few hundred ends with every prediction far off). A series whose adapted fit
        to its own support points is worse than predicting zero (the lag median, a robust
        seasonal naive forecast, with ``relative_to_lag``; the support mean otherwise) gets
        that zero forecast instead. The ridge head cannot diverge: it falls back only where
        its fit failed (not finite). Its support predictions are leave-one-out; against the
        mean's in-sample fit that test picked the worse forecast, and against the lag
        median's it detected worse in every family (docs/decisions.md).
        """
        with torch.no_grad():
            if self.steps == 0:
                ps, pq = mlp(self.params, batch.xs), mlp(self.params, batch.xq)
                return ps, pq, torch.zeros(len(batch), dtype=torch.bool, device=ps.device)
            ps, pq = adapt_predict(self.params, batch.xs, batch.ys, batch.ms, batch.xq,
                                   self.steps, self.rates, trim=self.trim)  # fmt: skip
            cnt = batch.ms.sum(1).clamp_min(1.0)
            fit = ((ps - batch.ys) ** 2 * batch.ms).sum(1) / cnt
            if is_ridge(self.rates):
                bad = ~(fit.isfinite() & pq.isfinite().all(1))
            else:
                zero = (batch.ys**2 * batch.ms).sum(1) / cnt
                bad = ~(fit <= zero)  # also catches NaN
            if bad.any():
                ps = torch.where(bad[:, None], torch.zeros_like(ps), ps)
                pq = torch.where(bad[:, None], torch.zeros_like(pq), pq)
            return ps, pq, bad


@dataclass
class Scratch:
    """A random initialisation trained by SGD on the K support points alone."""

    n_features: int
    hidden: int = 40
    steps: int = 100
    lr: float = 0.1
    seed: int = 0
    name: str = "scratch"

    def predict(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        params = init_params(self.n_features, self.hidden, torch.Generator().manual_seed(self.seed))
        with torch.no_grad():
            return adapt_predict(
                params, batch.xs, batch.ys, batch.ms, batch.xq, self.steps, self.lr
            )


@dataclass
class SeasonalNaive:
    """Forecast = the value one period earlier (0, the support mean, where unobserved)."""

    spec: FeatureSpec
    name: str = "seasonal_naive"

    def __post_init__(self) -> None:
        if not self.spec.seasonal_lag:
            raise ValueError(
                "seasonal naive needs the seasonal-lag feature (FeatureSpec.seasonal_lag=True)"
            )

    def predict(self, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
        lag = 2 * self.spec.harmonics  # index of the normalised lag value among the features
        if batch.base_s is not None:  # targets are relative to the lag already
            return torch.zeros_like(batch.ys), torch.zeros_like(batch.yq)
        return batch.xs[..., lag], batch.xq[..., lag]


def query_mse(forecaster: Forecaster, batch: TaskBatch) -> float:
    """Mean squared error over the observed query points (normalised units)."""
    _, pred = forecaster.predict(batch)
    err = (pred - batch.yq) ** 2 * batch.mq
    return float(err.sum() / batch.mq.sum().clamp_min(1.0))
