"""Meta-training: one initialisation per cluster, validated on held-out series.

Algorithms (``MetaConfig.algorithm``):

* ``maml``: second-order MAML (Finn, Abbeel and Levine, 2017).
* ``fomaml``: first-order MAML (same paper, section 5.2): no gradient through the inner steps.
* ``anil``: MAML whose inner loop adapts only the output layer (ANIL, Raghu, Raghu, Bengio
  and Vinyals, 2020, "Rapid learning or feature reuse?"); second-order. The hidden layers
  are meta-learned features every series shares, so nightly adaptation runs them once and
  steps a linear layer: several times cheaper than adapting every layer.
* ``ridge``: ANIL's shared hidden layers with the output layer solved in closed form: a
  ridge regression of the K support points on the hidden features, shrunk towards the
  meta-learned head by a learned penalty (R2-D2, Bertinetto, Henriques, Torr and Vedaldi,
  2019). The limit ANIL's inner steps approach, exact and without a step size to tune;
  ``inner_lr`` is the penalty's initial value, ``inner_steps`` is not used (any > 0).
* ``metasgd``: Meta-SGD (Li, Zhou, Chen and Li, 2017): per-parameter inner learning rates
  learned with the initialisation.
* ``pretrain``: the transfer-learning baseline: the initialisation is fit to all tasks
  jointly (plain regression, no inner loop); it is then fine-tuned on the K points like the
  others.

Pure computation: arrays in, a :class:`MetaModel` out. Saving it is the model store's job
(``tsmeta.store.models``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tsmeta import __version__
from tsmeta.forecaster import FeatureSpec, init_params, masked_mse
from tsmeta.meta import ALGORITHMS
from tsmeta.meta.batched import HEAD
from tsmeta.meta.calibrate import (
    CALIBRATION_PARTS,
    REMOVED_PARTS,
    adapted_predictions,
    calibrate,
    calibrate_partial,
)
from tsmeta.meta.maml import RIDGE, Params, Rates, is_ridge, maml_loss
from tsmeta.meta.tasks import NORMALISATION, TaskBatch, robust_sigma, sample_tasks
from tsmeta.scoring import TailModel

__all__ = [
    "ALGORITHMS",
    "MetaConfig",
    "MetaModel",
    "MetaLearner",
    "inner_rates_of",
    "meta_train",
    "robust_sigma",
]


@dataclass(frozen=True)
class MetaConfig:
    algorithm: str = "maml"
    k: int = 24
    horizon: int = 24
    hidden: int = 40
    inner_steps: int = 5  # steps taken when adapting (and in the inner loop of training)
    inner_lr: float = 0.1  # step size (Meta-SGD: initial value of every learned rate)
    meta_batch: int = 32
    meta_steps: int = 300
    meta_lr: float = 1e-3
    cut_every: int = 24  # align task cuts to midnight (hourly), as nightly scoring cuts
    val_fraction: float = 0.2  # share of series held out for validation
    val_tasks: int = 512
    # tasks the residual tail is fitted on, drawn from all the cluster's series (those that
    # are scored nightly); its 90th percentile sets the flag threshold, so more tasks than
    # early stopping needs. Held-out series alone gave tails 10x too wide on M4 Hourly.
    calib_tasks: int = 4096
    # the ridge head is refitted without support points beyond this many robust scales of
    # its leave-one-out residuals when adapting (scoring and calibration; ``ridge_head``'s
    # ``trim``); None: never. Ignored by the gradient-step algorithms. Models saved before
    # it load with None and score as they were calibrated.
    trim: float | None = 3.0
    # calibration parts left out (an ablation: ``benchmarks/families.py --ablate``); each a
    # keyword of ``calibrate`` (CALIBRATION_PARTS). Empty: the product's stack
    without: tuple[str, ...] = ()
    # grid steps per calendar day (24 hourly, 1 daily): the residual scale gets a factor
    # per weekday of the scored night (``TailModel.weekday_scale``). None: no weekday
    # factor (models saved before it load so; benchmarks on data without a calendar)
    steps_per_day: int | None = None
    eval_every: int = 25
    patience: int = 4  # evaluations without improvement before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        # stored states hold lists, and may name a part since removed (nothing to leave out)
        kept = tuple(p for p in self.without if p not in REMOVED_PARTS)
        object.__setattr__(self, "without", kept)
        unknown = sorted(set(self.without) - set(CALIBRATION_PARTS))
        if unknown:
            raise ValueError(
                f"unknown calibration part(s) {unknown} to leave out: the parts are "
                f"{list(CALIBRATION_PARTS)}"
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {ALGORITHMS}")
        if self.trim is not None and not self.trim > 0:
            raise ValueError(
                f"trim must be a positive number of robust scales or None (no refit), "
                f"received {self.trim}"
            )


def inner_rates_of(cfg: MetaConfig, learned: dict[str, torch.Tensor] | None = None) -> Rates:
    """What the inner loop steps with: learned rates (Meta-SGD's, the ridge head's
    penalty), the output layer's rate alone (ANIL), or one rate for every parameter."""
    if learned is not None:
        return learned
    if cfg.algorithm == "ridge":  # before training: the initial penalty
        return {RIDGE: torch.tensor(math.log(cfg.inner_lr))}
    if cfg.algorithm == "anil":
        return dict.fromkeys(HEAD, cfg.inner_lr)
    return cfg.inner_lr


@dataclass
class MetaModel:
    """A cluster's learned initialisation plus everything needed to adapt with it."""

    params: Params
    spec: FeatureSpec
    config: MetaConfig
    calibration: TailModel  # distribution of out-of-sample residual z-scores
    metrics: dict = field(default_factory=dict)
    inner_rates: dict[str, torch.Tensor] | None = None  # learned: Meta-SGD's, ridge's penalty
    # the tail of series adapted from fewer than K points (gaps, cold start): heavier than
    # the full-support tail; None (older models): the full-support one is used
    partial_calibration: TailModel | None = None

    @property
    def rates(self) -> Rates:
        """What the inner loop steps with (``inner_rates_of``)."""
        return inner_rates_of(self.config, self.inner_rates)

    def state(self) -> dict:
        """Plain, picklable state (tensors on CPU)."""
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "inner_rates": None
            if self.inner_rates is None
            else {k: v.detach().cpu() for k, v in self.inner_rates.items()},
            "spec": self.spec.to_dict(),
            "config": self.config.__dict__.copy(),
            "calibration": self.calibration.to_dict(),
            "partial_calibration": None
            if self.partial_calibration is None
            else self.partial_calibration.to_dict(),
            "metrics": self.metrics,
            "normalisation": dict(NORMALISATION),
            "code_version": __version__,
        }

    @classmethod
    def from_state(cls, state: dict) -> MetaModel:
        rates = state.get("inner_rates")
        return cls(
            params={k: v.detach().clone() for k, v in state["params"].items()},
            # older models: no neighbour test in the veto (nor in jumps), the single lag as
            # relative base, no spare period in the lag medians
            spec=FeatureSpec(
                **{
                    "veto_neighbours": False,
                    "veto_jumps": False,
                    "median_base": False,
                    "lag_spare": 0,
                    **state["spec"],
                }
            ),  # fmt: skip
            config=MetaConfig(**{"trim": None, **state["config"]}),  # older: no trim
            calibration=TailModel.from_dict(state["calibration"]),
            metrics=dict(state.get("metrics", {})),
            inner_rates=None
            if rates is None
            else {k: v.detach().clone() for k, v in rates.items()},
            partial_calibration=None
            if state.get("partial_calibration") is None
            else TailModel.from_dict(state["partial_calibration"]),
        )


class MetaLearner:
    """The outer loop's state and step for one algorithm; data-agnostic (any TaskBatch)."""

    def __init__(self, params: Params, cfg: MetaConfig, device: str = "cpu") -> None:
        self.cfg = cfg
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
        self.rates: dict[str, torch.Tensor] | None = None
        rate_lr = cfg.meta_lr
        if cfg.algorithm == "metasgd":
            self.rates = {
                k: torch.full_like(v, cfg.inner_lr).requires_grad_(True)
                for k, v in self.params.items()
            }
        if cfg.algorithm == "ridge":  # one scalar: a larger step, or it barely moves in 300
            self.rates = {RIDGE: torch.tensor(math.log(cfg.inner_lr), device=device,
                                              requires_grad=True)}  # fmt: skip
            rate_lr = 10 * cfg.meta_lr
        groups = [{"params": list(self.params.values())}]
        if self.rates is not None:
            groups.append({"params": list(self.rates.values()), "lr": rate_lr})
        self.opt = torch.optim.Adam(groups, lr=cfg.meta_lr)
        self._leaves = [p for g in groups for p in g["params"]]

    @property
    def inner_rates(self) -> Rates:
        return inner_rates_of(self.cfg, self.rates)

    def loss(self, batch: TaskBatch) -> torch.Tensor:
        cfg = self.cfg
        if cfg.algorithm == "pretrain":  # fit the initialisation itself to every point
            x = torch.cat([batch.xs, batch.xq], 1)
            y = torch.cat([batch.ys, batch.yq], 1)
            m = torch.cat([batch.ms, batch.mq], 1)
            return masked_mse(self.params, x.reshape(-1, x.shape[-1]), y.reshape(-1), m.reshape(-1))
        return maml_loss(
            self.params, batch, cfg.inner_steps, self.inner_rates, cfg.algorithm == "fomaml"
        )

    def step(self, batch: TaskBatch) -> float:
        """One outer update; returns the loss (NaN batches are skipped, never applied)."""
        loss = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return math.nan
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._leaves, max_norm=10.0)
        self.opt.step()
        return loss.item()

    def snapshot(self) -> tuple[Params, dict[str, torch.Tensor] | None]:
        p = {k: v.detach().clone() for k, v in self.params.items()}
        r = None if self.rates is None else {k: v.detach().clone() for k, v in self.rates.items()}
        return p, r


def query_mse(params: Params, batch: TaskBatch, steps: int, rates: Rates) -> float:
    _, pred = adapted_predictions(params, batch, steps, rates)
    err = (pred - batch.yq) ** 2 * batch.mq
    return float(err.sum() / batch.mq.sum().clamp_min(1.0))


def _outer_loop(
    learner: MetaLearner, draw: Callable[[], TaskBatch], val_batch: TaskBatch, cfg: MetaConfig,
    on_eval: Callable[[int, float], None] | None,
) -> tuple[tuple, list[tuple[int, float, float]], int, int]:  # fmt: skip
    """Outer steps on batches from ``draw`` until ``cfg.meta_steps`` or early stopping
    (``cfg.patience`` evaluations without improvement of the adapted validation loss).
    Returns ((best val loss, best snapshot, its step), history, non-finite steps skipped,
    steps run)."""
    best = (math.inf, learner.snapshot(), 0)
    history: list[tuple[int, float, float]] = []
    stale = skipped = step = 0
    for step in range(1, cfg.meta_steps + 1):
        loss = learner.step(draw())
        skipped += math.isnan(loss)
        if step % cfg.eval_every == 0 or step == cfg.meta_steps:
            val = query_mse(learner.params, val_batch, cfg.inner_steps, learner.inner_rates)
            history.append((step, round(loss, 5), round(val, 5)))
            if on_eval is not None:
                on_eval(step, val)
            if val < best[0] - 1e-4:
                best, stale = (val, learner.snapshot(), step), 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    return best, history, skipped, step


def meta_train(
    values: np.ndarray,
    mask: np.ndarray,
    start_step: int,
    spec: FeatureSpec,
    cfg: MetaConfig,
    device: str = "cpu",
    on_eval: Callable[[int, float], None] | None = None,
) -> MetaModel:
    """Meta-train an initialisation on the series of one cluster.

    values (n, T) float (NaN where missing), mask (n, T) bool: the cluster's training
    window; ``start_step`` is the global grid step of column 0. Validation uses held-out
    series; training stops early when the adapted validation loss stops improving, and
    the best parameters are kept. ``on_eval(step, val_loss)`` reports progress.
    """
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"meta-training needs at least 2 series (1 for validation), received {n}")
    t_begin = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch_values = torch.as_tensor(values, dtype=torch.float32, device=device)
    torch_mask = torch.as_tensor(mask, dtype=torch.bool, device=device)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    val_rows, train_rows = perm[:n_val], perm[n_val:]
    tv, tm = torch_values[train_rows], torch_mask[train_rows]
    vv, vm = torch_values[val_rows], torch_mask[val_rows]

    def tasks(v: torch.Tensor, m: torch.Tensor, count: int) -> TaskBatch:
        return sample_tasks(v, m, count, spec, cfg.k, cfg.horizon, start_step, gen, cfg.cut_every)

    val_batch = tasks(vv, vm, cfg.val_tasks)
    learner = MetaLearner(init_params(spec.n_features, cfg.hidden, gen), cfg, device)
    best, history, skipped, step = _outer_loop(learner, lambda: tasks(tv, tm, cfg.meta_batch),
                                               val_batch, cfg, on_eval)  # fmt: skip
    params, rates = best[1]
    eff_rates = inner_rates_of(cfg, rates)
    metrics = {
        "val_query_mse_adapted": best[0],
        "val_query_mse_unadapted": query_mse(params, val_batch, 0, eff_rates),
        "best_step": best[2],
        "steps_run": step,
        "steps_skipped_nonfinite": skipped,
        "history": history,
        "n_series": n,
        "n_steps": int(values.shape[1]),
        "seconds": round(time.perf_counter() - t_begin, 3),
    }
    if is_ridge(rates):  # the learned penalty, for the registry and logs
        metrics["ridge_penalty"] = float(rates[RIDGE].exp())
    calib_batch = tasks(torch_values, torch_mask, cfg.calib_tasks)
    tail = calibrate(
        params,
        calib_batch,
        cfg.inner_steps,
        eff_rates,
        trim=cfg.trim,
        steps_per_day=cfg.steps_per_day,
        **dict.fromkeys(cfg.without, False),
    )
    partial = calibrate_partial(params, calib_batch, torch_values, torch_mask, spec, cfg,
                                eff_rates, start_step, gen)  # fmt: skip
    return MetaModel(params, spec, cfg, tail, metrics, rates, partial)
