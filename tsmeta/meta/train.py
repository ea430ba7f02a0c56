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
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tsmeta import __version__
from tsmeta.calibration import (
    NAIVE_VETO_SCALE,
    TailModel,
    fit_step_scale,
    fit_tail,
    fit_veto,
    fit_weekday_scale,
    fit_windows,
    neighbours,
    tail_probability,
    weekday_of,
)
from tsmeta.forecaster import FeatureSpec, init_params, masked_mse, mlp
from tsmeta.meta import ALGORITHMS
from tsmeta.meta.batched import HEAD, adapt_predict
from tsmeta.meta.maml import RIDGE, Params, Rates, adapt_batch, is_ridge, maml_loss, predict_batch
from tsmeta.meta.tasks import NORMALISATION, TaskBatch, robust_sigma, sample_tasks

__all__ = [
    "ALGORITHMS",
    "MetaConfig",
    "MetaModel",
    "MetaLearner",
    "inner_rates_of",
    "meta_train",
    "robust_sigma",
    "residual_sigma",
    "contrast_sigma",
    "calibrate",
    "calibrate_partial",
]


# the parts of the residual calibration that an ablation can leave out (``calibrate``'s
# keywords; ``MetaConfig.without``)
CALIBRATION_PARTS = ("per_step", "weekdays", "empirical", "windows", "isolation", "onsets", "spread",
                     "veto", "drop")  # fmt: skip


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
        object.__setattr__(self, "without", tuple(self.without))  # stored states hold lists
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
            spec=FeatureSpec(**{"veto_neighbours": False, **state["spec"]}),  # older: no
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


def query_mse(params: Params, batch: TaskBatch, steps: int, rates: Rates) -> float:
    _, pred = adapted_predictions(params, batch, steps, rates)
    err = (pred - batch.yq) ** 2 * batch.mq
    return float(err.sum() / batch.mq.sum().clamp_min(1.0))


# the floor's factor: this quantile, over calibration tasks, of the support-residual scale
# over the seasonal-difference spread. The median floored half the series and ranked the
# generator's anomalies a little better (PR-AUC 0.409 against 0.397), but flagged M4's
# clean test hours at 2.9e-3 against 8.1e-4 for a configured 1e-3 (benchmarks/README.md)
SPREAD_FLOOR_QUANTILE = 0.25
# calibration refits its tails without the points of its own sample that the previous fit
# puts below this tail probability (the sample's anomalies), at most this many fits
CALIBRATION_DROP = 1e-4
CALIBRATION_PASSES = 3


def spread_floor_of(sigma: torch.Tensor, spread: torch.Tensor | None) -> float | None:
    """The factor of ``residual_sigma``'s floor: the ``SPREAD_FLOOR_QUANTILE`` over the
    calibration tasks of the support-residual scale over the seasonal-difference spread
    (tasks with a spread), so only series whose support residuals came out small for
    their variability are floored. None where there is no spread (no seasonal lag) or no
    task has one."""
    if spread is None:
        return None
    ok = spread > 0
    if not bool(ok.any()):
        return None
    return float(torch.quantile((sigma[ok] / spread[ok]).double(), SPREAD_FLOOR_QUANTILE))


def residual_sigma(
    pred_s: torch.Tensor, batch: TaskBatch, spread_floor: float | torch.Tensor | None
) -> torch.Tensor:
    """(B,) each series' residual scale (normalised units): the robust scale of its support
    residuals (leave-one-out for the ridge head), floored at ``spread_floor`` (a float, or
    one per series) times the robust spread of its support's seasonal differences.

    24 support residuals give a noisy scale, and a head fitted closely to its support
    (or to an anomalous support) gives one too small: its normal points then score as
    anomalies, and rank above real ones across series. The seasonal differences of the
    same points measure the series' own variability independently of the fit, and grow
    when the support moved away from the period before it."""
    return _floored(robust_sigma(pred_s - batch.ys, batch.ms), batch.spread, spread_floor)


def contrast_sigma(resid: torch.Tensor, m: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """(B,) the robust scale of the local contrast of support residuals (B, K) whose
    observed points are ``m``: 1.4826 * median |r_t - mean(r_(t-1), r_(t+1))| (one
    neighbour at the ends and next to gaps), floored. The unit of
    ``tsmeta.calibration.isolation`` (via ``rel``): how much a series' points jump on
    their own, whatever its forecast misses (leave-one-out residuals for the ridge head)."""
    obs = m > 0
    x = torch.where(obs, resid, float("nan"))
    c = x - torch.stack(neighbours(x)).nanmean(0)  # NaN where no neighbour is observed
    ok = obs & ~c.isnan()
    return robust_sigma(torch.nan_to_num(c), ok.to(resid.dtype), floor)


def _floored(sigma: torch.Tensor, spread: torch.Tensor | None, floor) -> torch.Tensor:  # noqa: ANN001
    if floor is None or spread is None:
        return sigma
    return torch.maximum(sigma, floor * spread)


def calibrate(
    params: Params,
    batch: TaskBatch,
    steps: int,
    rates: Rates,
    per_step: bool = True,
    empirical: bool = True,
    windows: bool = True,
    spread: bool = True,
    veto: bool = True,
    isolation: bool = True,
    onsets: bool = True,
    trim: float | None = None,
    drop: bool = True,
    weekdays: bool = True,
    steps_per_day: int | None = None,
) -> TailModel:
    """Tail model of out-of-sample z = r_query / sigma_support on calibration tasks
    (the query points are never part of the support the series adapts on).

    With ``spread`` (and a seasonal lag) sigma is ``residual_sigma``'s: the support
    residuals' scale floored by the seasonal-difference spread, its factor fitted here
    (``spread_floor_of``) and stored in the tail model so that scoring floors alike.

    With ``per_step`` the residual scale of each forecast step is fitted first (errors
    grow with the horizon) and the tail is fitted to z divided by it: one tail for all
    steps would mix scales and come out heavier than any step's. With ``windows`` the
    tails of sustained deviations are fitted on the same sample (``fit_windows``), and with
    ``isolation`` that of single points jumping away from both neighbours, with
    ``onsets`` that of the abrupt start or end of a sustained deviation. With
    ``veto`` (and a seasonal lag) the seasonal-naive veto is fitted last (``fit_veto``):
    a point the support's last same-phase value explains is not an anomaly, however badly
    the model forecast it. ``trim``: the adaptation's (``MetaConfig.trim``), as scoring
    adapts. With ``drop`` the tails are refitted without the sample's own anomalies (the
    points below ``CALIBRATION_DROP``, up to ``CALIBRATION_PASSES`` fits).
    """
    ps, pq = adapted_predictions(params, batch, steps, rates, trim)
    sigma = robust_sigma(ps - batch.ys, batch.ms)  # as residual_sigma, the floor fitted first
    floor = spread_floor_of(sigma, batch.spread) if spread else None
    sigma = _floored(sigma, batch.spread, floor)
    jumps = isolation or onsets  # statistics in units of the series' own jumps
    rel = (sigma / contrast_sigma(ps - batch.ys, batch.ms)).detach().cpu() if jumps else None
    signed = ((pq - batch.yq) / sigma[:, None]).detach().cpu()
    z = signed.abs().numpy()
    observed = (batch.mq > 0).cpu().numpy()
    step_scale = fit_step_scale(z, observed) if per_step else None
    if step_scale is not None:
        z = z / np.asarray(step_scale)[None, :]
        signed = signed / torch.as_tensor(step_scale, dtype=signed.dtype)[None, :]
    weekday_scale = None
    if weekdays and steps_per_day and batch.night_step is not None:
        weekday = weekday_of(batch.night_step.cpu().numpy(), steps_per_day)
        weekday_scale = fit_weekday_scale(z, observed, weekday)
        if weekday_scale is not None:
            factor = np.asarray(weekday_scale)[weekday][:, None]
            z = z / factor
            signed = signed / torch.as_tensor(factor, dtype=signed.dtype)
    obs = torch.as_tensor(observed)
    naive = None if not veto or batch.naive is None else batch.naive.cpu()

    def fit(keep: torch.Tensor) -> TailModel:
        k = keep.numpy()
        point = replace(fit_tail(z[k], empirical=empirical), step_scale=step_scale,
                        spread_floor=floor, weekday_scale=weekday_scale)  # fmt: skip
        if not windows:
            tail = point
        else:
            tail = replace(point, windows=fit_windows(signed, obs, point, rel=rel, fit=keep,
                                                      isolated=isolation, onsets=onsets))  # fmt: skip
        if naive is None:
            return tail
        log_p = torch.log(tail_probability(signed, obs, tail, rel=rel))
        # the unit is stored with the veto: scoring takes the same, whatever it is later
        knots, factor = fit_veto(log_p, naive, obs, fit=keep, scale=NAIVE_VETO_SCALE)
        return replace(tail, veto=knots, veto_factor=factor, veto_scale=NAIVE_VETO_SCALE)

    # the sample's own anomalies (a training window holds them) widen every tail fitted on
    # it, deep down most: the fit is repeated without the points the previous fit finds
    # below CALIBRATION_DROP (clean points there are about that share of the sample, so
    # the rates above it barely move), until no point changes side
    if not drop:
        return fit(obs)
    keep, tail = obs, fit(obs)
    for _ in range(CALIBRATION_PASSES - 1):
        new = obs & ~(tail_probability(signed, obs, tail, naive, rel) < CALIBRATION_DROP)
        if torch.equal(new, keep):
            break
        keep, tail = new, fit(new)
    return tail


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
    best = (math.inf, learner.snapshot(), 0)
    history: list[tuple[int, float, float]] = []
    stale = skipped = step = 0
    for step in range(1, cfg.meta_steps + 1):
        loss = learner.step(tasks(tv, tm, cfg.meta_batch))
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
