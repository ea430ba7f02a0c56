"""Model-agnostic meta-learning (Finn, Abbeel and Levine, 2017), batched with torch.func.

The inner loop adapts a parameter dict with a few gradient steps on a task's support
set; the outer objective is the query loss after adaptation, averaged over tasks with
``vmap`` (no Python loop over tasks). Second-order by default: the outer gradient flows
through the inner steps. ``first_order=True`` stops it there (FOMAML). The inner step
size is a float (MAML) or a dict of per-parameter rates: tensors learned in the outer loop
(Meta-SGD, Li et al. 2017), or rates for the output layer only (ANIL, Raghu et al. 2020).
Parameters a rate dict leaves out are not adapted: the inner loop differentiates and steps
only the ones it names.

A rate dict holding ``RIDGE`` (a learned log penalty) replaces the inner steps by their
limit: the output layer solved in closed form, a ridge regression of the support points on
the shared hidden features, shrunk towards the meta-learned head (``ridge_head``; R2-D2,
Bertinetto, Henriques, Torr and Vedaldi, 2019, "Meta-learning with differentiable
closed-form solvers"). The outer loop differentiates through the solve.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from tsmeta.forecaster import hidden_features, masked_mse, mlp
from tsmeta.meta.linalg import spd_solve
from tsmeta.meta.tasks import TaskBatch

__all__ = ["Params", "Rates", "RIDGE", "adapt", "adapted_names", "adapt_batch", "maml_loss",
           "predict_batch", "ridge_head", "is_ridge"]  # fmt: skip

Params = dict[str, torch.Tensor]
Rates = float | dict[str, torch.Tensor | float]  # a dict adapts only the names it holds
RIDGE = "log_ridge"  # the rates key of the closed-form head: log of the ridge penalty


def is_ridge(lr: Rates) -> bool:
    """True when the rates ask for the closed-form ridge head (``RIDGE``)."""
    return isinstance(lr, dict) and RIDGE in lr


def ridge_head(
    h: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor,
    log_penalty: torch.Tensor | float, loo: bool = False,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Per-series output layers minimising the masked support MSE plus ``exp(log_penalty)``
    times the squared distance to the shared head (w0 (H,), b0 ()).

    h (B, K, H) hidden features, ys and ms (B, K); returns w (B, H), b (B,) and, with
    ``loo``, each support point's leave-one-out residual (B, K): what the head fitted
    without that point misses it by, in closed form (zero where unobserved). Unobserved
    support points drop out (their rows are zeroed). The smaller of the two equivalent
    systems is solved: K x K (the kernel form) when K <= H + 1, else (H + 1) x (H + 1).
    """
    B, K, H = h.shape
    r = (ys - h @ w0.reshape(-1) - b0.reshape(())) * ms  # (B, K) residuals of the prior head
    penalty = torch.as_tensor(log_penalty, dtype=h.dtype, device=h.device).exp()
    lam = penalty * ms.sum(1).clamp_min(1.0)  # (B,) the MSE's mean: penalty x count
    if K <= H + 1:  # kernel form: alpha = G^-1 r, residuals lam alpha, 1 - hat_ii = lam G^-1_ii
        # G = (h h^T + 1) masked on both sides (the 1: the bias's feature) + lam I; an
        # unobserved point's row is lam e_i and its r_i is 0, so its alpha_i is 0 and it
        # drops out of d below without a mask
        gram = torch.baddbmm(torch.ones((), dtype=h.dtype, device=h.device), h, h.transpose(1, 2))
        gram.mul_(ms.unsqueeze(2)).mul_(ms.unsqueeze(1))
        gram.diagonal(dim1=1, dim2=2).add_(lam.unsqueeze(1))
        if torch.is_grad_enabled():  # training (autograd, vmap): torch.linalg
            inv = torch.linalg.inv(gram) if loo else None
            alpha = (inv @ r.unsqueeze(-1)).squeeze(-1) if inv is not None else (
                torch.linalg.solve(gram, r.unsqueeze(-1)).squeeze(-1))  # fmt: skip
            inv_diag = None if inv is None else torch.diagonal(inv, dim1=1, dim2=2)
        else:  # scoring: the batch-vectorised Cholesky (LAPACK goes matrix by matrix)
            alpha, inv_diag = spd_solve(gram, r, inverse_diagonal=loo)
        # h^T alpha (elementwise: B tiny matrix products cost more) and sum(alpha), each in
        # an order that does not depend on how many series the chunk holds: torch's sums
        # of a (B, K) tensor over K are not (a series' bias changed in its last bit with
        # the chunk size, and with it the stored scores), so the bias adds K columns in turn
        d_b = alpha[:, 0]
        for k in range(1, K):
            d_b = d_b + alpha[:, k]
        d = torch.cat([(h * alpha.unsqueeze(-1)).sum(1), d_b.unsqueeze(1)], 1)
        if loo:
            resid_loo = alpha / inv_diag * ms
    else:
        phi = torch.cat([h, torch.ones_like(h[..., :1])], -1) * ms.unsqueeze(-1)  # (B, K, P)
        eye = torch.eye(H + 1, dtype=h.dtype, device=h.device)
        gram = phi.transpose(1, 2) @ phi + lam.reshape(B, 1, 1) * eye
        if loo:
            a_phi = torch.linalg.solve(gram, phi.transpose(1, 2))  # (B, P, K)
            d = (a_phi @ r.unsqueeze(-1)).squeeze(-1)
            hat = (phi * a_phi.transpose(1, 2)).sum(-1)  # (B, K)
            resid_loo = (r - (phi @ d.unsqueeze(-1)).squeeze(-1)) / (1 - hat) * ms
        else:
            d = torch.linalg.solve(gram, phi.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
    w, b = w0.reshape(1, -1) + d[:, :H], b0.reshape(()) + d[:, H]
    return (w, b, resid_loo) if loo else (w, b)


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
    outer loop, still receive the meta-gradient through the adapted ones). With ``RIDGE``
    rates the output layer is solved in closed form (any ``steps`` > 0)."""
    if is_ridge(lr):
        if steps == 0:
            return dict(params)
        h = hidden_features(params, xs).unsqueeze(0)
        w, b = ridge_head(h, ys.unsqueeze(0), ms.unsqueeze(0), params["w3"], params["b3"],
                          lr[RIDGE])  # type: ignore[index]  # fmt: skip
        return {**params, "w3": w.reshape(params["w3"].shape), "b3": b.reshape(params["b3"].shape)}
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
