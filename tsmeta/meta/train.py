"""Meta-training loop: one initialisation per cluster, validated on held-out series.

Pure computation: arrays in, a :class:`MetaModel` out. Saving it is the model store's job
(``tsmeta.store.models``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from tsmeta.calibration import TailModel, fit_tail
from tsmeta.forecaster import FeatureSpec, init_params, mlp
from tsmeta.meta.maml import adapt_batch, maml_loss, predict_batch
from tsmeta.meta.tasks import TaskBatch, sample_tasks

__all__ = ["MetaConfig", "MetaModel", "meta_train", "robust_sigma", "calibrate"]

ALGORITHMS = ("maml", "fomaml")


@dataclass(frozen=True)
class MetaConfig:
    algorithm: str = "maml"  # "maml" (second order) or "fomaml"
    k: int = 24
    horizon: int = 24
    hidden: int = 40
    inner_steps: int = 5
    inner_lr: float = 0.1
    meta_batch: int = 32
    meta_steps: int = 300
    meta_lr: float = 1e-3
    cut_every: int = 24  # align task cuts to midnight (hourly), as nightly scoring cuts
    val_fraction: float = 0.2  # share of series held out for validation
    val_tasks: int = 512
    eval_every: int = 25
    patience: int = 4  # evaluations without improvement before stopping
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {ALGORITHMS}")


@dataclass
class MetaModel:
    """A cluster's meta-learned initialisation plus everything needed to adapt with it."""

    params: dict[str, torch.Tensor]
    spec: FeatureSpec
    config: MetaConfig
    calibration: TailModel  # distribution of out-of-sample residual z-scores
    metrics: dict = field(default_factory=dict)

    def state(self) -> dict:
        """Plain, picklable state (tensors on CPU)."""
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "spec": self.spec.to_dict(),
            "config": self.config.__dict__.copy(),
            "calibration": self.calibration.to_dict(),
            "metrics": self.metrics,
        }

    @classmethod
    def from_state(cls, state: dict) -> MetaModel:
        return cls(
            params={k: v.detach().clone() for k, v in state["params"].items()},
            spec=FeatureSpec(**state["spec"]),
            config=MetaConfig(**state["config"]),
            calibration=TailModel.from_dict(state["calibration"]),
            metrics=dict(state.get("metrics", {})),
        )


def robust_sigma(resid: torch.Tensor, m: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Per-row robust residual scale: 1.4826 * median |r| over observed points, floored.

    resid, m (B, N) -> (B,). Unobserved points are pushed to +inf and the median is taken
    over the observed ones by counting.
    """
    a = torch.where(m > 0, resid.abs(), torch.full_like(resid, float("inf")))
    a_sorted, _ = torch.sort(a, dim=1)
    cnt = m.sum(1).long()
    idx = ((cnt - 1).clamp_min(0) // 2).unsqueeze(1)
    med = torch.gather(a_sorted, 1, idx).squeeze(1)
    med = torch.where(cnt > 0, med, torch.ones_like(med))
    return (1.4826 * med).clamp_min(floor)


def _adapted_residuals(
    params: dict, batch: TaskBatch, cfg: MetaConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    fast = adapt_batch(params, batch, cfg.inner_steps, cfg.inner_lr)
    rs = predict_batch(fast, batch.xs) - batch.ys
    rq = predict_batch(fast, batch.xq) - batch.yq
    return rs, rq


def calibrate(params: dict, batch: TaskBatch, cfg: MetaConfig) -> TailModel:
    """Tail model of out-of-sample z = r_query / sigma_support on held-out tasks."""
    with torch.no_grad():
        rs, rq = _adapted_residuals(params, batch, cfg)
        z = (rq / robust_sigma(rs, batch.ms)[:, None]).abs()
        z = z[batch.mq > 0]
    return fit_tail(z.cpu().numpy())


def _val_loss(params: dict, batch: TaskBatch, cfg: MetaConfig, steps: int) -> float:
    with torch.no_grad():
        if steps:
            pred = predict_batch(adapt_batch(params, batch, steps, cfg.inner_lr), batch.xq)
        else:
            pred = mlp(params, batch.xq)
        err = (pred - batch.yq) ** 2 * batch.mq
        return float(err.sum() / batch.mq.sum().clamp_min(1.0))


def meta_train(
    values: np.ndarray,
    mask: np.ndarray,
    start_step: int,
    spec: FeatureSpec,
    cfg: MetaConfig,
    device: str = "cpu",
    on_eval: object | None = None,
) -> MetaModel:
    """Meta-train an initialisation on the series of one cluster.

    values (n, T) float (NaN where missing), mask (n, T) bool: the cluster's training
    window; ``start_step`` is the global grid step of column 0. ``on_eval(step, val_loss)``
    is called at every evaluation (progress reporting).
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
    val_batch = sample_tasks(
        vv, vm, cfg.val_tasks, spec, cfg.k, cfg.horizon, start_step, gen, cfg.cut_every
    )

    params = {
        k: v.to(device).requires_grad_(True)
        for k, v in init_params(spec.n_features, cfg.hidden, gen).items()
    }
    opt = torch.optim.Adam(params.values(), lr=cfg.meta_lr)
    first_order = cfg.algorithm == "fomaml"
    best = (math.inf, {k: v.detach().clone() for k, v in params.items()}, 0)
    history = []
    stale = 0
    step = 0
    skipped = 0
    for step in range(1, cfg.meta_steps + 1):
        batch = sample_tasks(
            tv, tm, cfg.meta_batch, spec, cfg.k, cfg.horizon, start_step, gen, cfg.cut_every
        )
        loss = maml_loss(params, batch, cfg.inner_steps, cfg.inner_lr, first_order)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1  # a degenerate batch; never let it poison the initialisation
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=10.0)
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.meta_steps:
            val = _val_loss(params, val_batch, cfg, cfg.inner_steps)
            history.append((step, round(loss.item(), 5), round(val, 5)))
            if on_eval is not None:
                on_eval(step, val)  # type: ignore[operator]
            if val < best[0] - 1e-4:
                best = (val, {k: v.detach().clone() for k, v in params.items()}, step)
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    final = best[1]
    metrics = {
        "val_query_mse_adapted": best[0],
        "val_query_mse_unadapted": _val_loss(final, val_batch, cfg, 0),
        "best_step": best[2],
        "steps_run": step,
        "steps_skipped_nonfinite": skipped,
        "history": history,
        "n_series": n,
        "n_steps": int(values.shape[1]),
        "seconds": round(time.perf_counter() - t_begin, 3),
    }
    return MetaModel(final, spec, cfg, calibrate(final, val_batch, cfg), metrics)
