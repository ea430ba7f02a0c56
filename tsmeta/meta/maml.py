"""Model-agnostic meta-learning (Finn, Abbeel and Levine, 2017), batched with torch.func.

The inner loop adapts a parameter dict with a few gradient steps on a task's support
set; the outer objective is the query loss after adaptation, averaged over tasks with
``vmap`` (no Python loop over tasks). Second-order by default: the outer gradient flows
through the inner steps. ``first_order=True`` stops it there (FOMAML). The inner step
size is a float (MAML) or a dict of per-parameter rates: tensors learned in the outer loop
(Meta-SGD, Li et al. 2017), or rates for the output layer only (ANIL, Raghu et al. 2020).
Parameters a rate dict leaves out are not adapted: the inner loop differentiates and steps
only the ones it names.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from tsmeta.forecaster import masked_mse, mlp
from tsmeta.meta.tasks import TaskBatch

__all__ = ["Params", "Rates", "adapt", "adapted_names", "adapt_batch", "maml_loss", "predict_batch"]

Params = dict[str, torch.Tensor]
Rates = float | dict[str, torch.Tensor | float]  # a dict adapts only the names it holds


def _step(params: Params, g: Params, lr: Rates) -> Params:
    if isinstance(lr, dict):
        return {name: params[name] - lr[name] * g[name] for name in params}
    return {name: params[name] - lr * g[name] for name in params}


def adapted_names(params: Params, lr: Rates) -> tuple[str, ...]:
    """The parameters the inner loop adapts: every one, or those a rate dict names."""
    if not isinstance(lr, dict):
        return tuple(params)
    unknown = sorted(set(lr) - set(params))
    if unknown:
        raise ValueError(f"inner rates name parameters the network lacks: {unknown}")
    return tuple(name for name in params if name in lr)


def adapt(
    params: Params, xs: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor,
    steps: int, lr: Rates, first_order: bool = False,
) -> Params:  # fmt: skip
    """``steps`` gradient steps on one task's support set (xs (K, F), ys (K,), ms (K,)).

    Only the parameters ``adapted_names`` picks move; the others stay shared (and, in the
    outer loop, still receive the meta-gradient through the adapted ones)."""
    names = adapted_names(params, lr)
    fixed = {k: v for k, v in params.items() if k not in names}

    def support_loss(sub: Params, xs: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor):  # noqa: ANN202
        return masked_mse({**fixed, **sub}, xs, ys, ms)

    loss_grad = grad(support_loss)
    sub = {k: params[k] for k in names}
    for _ in range(steps):
        g = loss_grad(sub, xs, ys, ms)
        if first_order:
            g = {name: t.detach() for name, t in g.items()}
        sub = _step(sub, g, lr)
    return {**fixed, **sub}


def maml_loss(
    params: Params, batch: TaskBatch, steps: int, lr: Rates, first_order: bool = False
) -> torch.Tensor:
    """Mean query loss after inner adaptation, over all tasks of the batch."""

    def task_loss(xs, ys, ms, xq, yq, mq):  # one task
        fast = adapt(params, xs, ys, ms, steps, lr, first_order)
        return masked_mse(fast, xq, yq, mq)

    losses = vmap(task_loss)(batch.xs, batch.ys, batch.ms, batch.xq, batch.yq, batch.mq)
    return losses.mean()


def adapt_batch(params: Params, batch: TaskBatch, steps: int, lr: Rates) -> Params:
    """Adapted parameters for every task at once: each tensor gains a leading B axis."""
    fn = vmap(lambda xs, ys, ms: adapt(params, xs, ys, ms, steps, lr))
    return fn(batch.xs, batch.ys, batch.ms)


def predict_batch(fast: Params, x: torch.Tensor) -> torch.Tensor:
    """Per-task predictions with batched parameters: x (B, N, F) -> (B, N)."""
    return vmap(mlp)(fast, x)
