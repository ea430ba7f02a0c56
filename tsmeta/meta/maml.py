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
import torch.nn.functional as F
from torch.func import grad, vmap

from tsmeta.forecaster import hidden_features, masked_mse, mlp
from tsmeta.meta.linalg import inverse_columns, spd_solve
from tsmeta.meta.tasks import TaskBatch, robust_sigma

__all__ = ["Params", "Rates", "RIDGE", "adapt", "adapted_names", "adapt_batch", "maml_loss",
           "predict_batch", "ridge_head", "is_ridge", "trim_rounds"]  # fmt: skip

Params = dict[str, torch.Tensor]
Rates = float | dict[str, torch.Tensor | float]  # a dict adapts only the names it holds
RIDGE = "log_ridge"  # the rates key of the closed-form head: log of the ridge penalty


def is_ridge(lr: Rates) -> bool:
    """True when the rates ask for the closed-form ridge head (``RIDGE``)."""
    return isinstance(lr, dict) and RIDGE in lr


def ridge_head(
    h: torch.Tensor, ys: torch.Tensor, ms: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor,
    log_penalty: torch.Tensor | float, loo: bool = False, trim: float | None = None,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Per-series output layers minimising the masked support MSE plus ``exp(log_penalty)``
    times the squared distance to the shared head (w0 (H,), b0 ()).

    h (B, K, H) hidden features, ys and ms (B, K); returns w (B, H), b (B,) and, with
    ``loo``, each support point's leave-one-out residual (B, K): what the head fitted
    without that point misses it by, in closed form (zero where unobserved). Unobserved
    support points drop out (their rows are zeroed). The smaller of the two equivalent
    systems is solved: K x K (the kernel form) when K <= H + 1, else (H + 1) x (H + 1).

    With ``trim`` (implies ``loo``) the head is refitted without its support outliers:
    points whose leave-one-out residual is beyond ``trim`` times the series' robust scale
    of them (at most ``trim_rounds(K)``, the largest first) are left out, at the same
    penalty, by rank-one downdates of the solve already made (``_trim_kernel``,
    ``_trim_primal``: no second factorisation). A point left out then reports its residual
    under the refitted head (out of sample for it, as leave-one-out is), the others their
    leave-one-out residual under it. A spike in the support would otherwise pull the head
    towards it and tilt the night's forecast.
    """
    loo = loo or trim is not None
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
            columns = lambda sub, idx: torch.gather(inv[sub], 2, idx[:, None, :].expand(-1, K, -1))  # noqa: E731
        else:  # scoring: the batch-vectorised Cholesky (LAPACK goes matrix by matrix)
            if trim is None:
                alpha, inv_diag = spd_solve(gram, r, inverse_diagonal=loo)
            else:
                alpha, inv_diag, factor = spd_solve(gram, r, inverse_factor=True)
                columns = lambda sub, idx: inverse_columns(factor[:, :, sub], idx)  # noqa: E731
        if trim is not None:
            resid_trim = alpha / inv_diag * ms
            idx, act = _outliers(resid_trim, ms, trim)
            sub = act.any(1).nonzero().squeeze(1)  # only these series go through the rounds
            if len(sub):
                alpha, resid_trim = alpha.clone(), resid_trim.clone()
                alpha[sub], resid_trim[sub] = _trim_kernel(
                    alpha[sub], inv_diag[sub], columns(sub, idx[sub]), gram[sub], r[sub], ms[sub],
                    idx[sub], act[sub],
                )  # fmt: skip
        # h^T alpha (elementwise: B tiny matrix products cost more) and sum(alpha), each in
        # an order that does not depend on how many series the chunk holds: torch's sums
        # of a (B, K) tensor over K are not (a series' bias changed in its last bit with
        # the chunk size, and with it the stored scores), so the bias adds K columns in turn
        d_b = alpha[:, 0]
        for k in range(1, K):
            d_b = d_b + alpha[:, k]
        d = torch.cat([(h * alpha.unsqueeze(-1)).sum(1), d_b.unsqueeze(1)], 1)
        if trim is not None:
            resid_loo = resid_trim
        elif loo:
            resid_loo = alpha / inv_diag * ms
    else:
        phi = torch.cat([h, torch.ones_like(h[..., :1])], -1) * ms.unsqueeze(-1)  # (B, K, P)
        eye = torch.eye(H + 1, dtype=h.dtype, device=h.device)
        gram = phi.transpose(1, 2) @ phi + lam.reshape(B, 1, 1) * eye
        if loo:
            # Phi A^-1 (B, K, P), in memory order (A^-1 is symmetric: it is a_phi = A^-1 Phi^T
            # transposed): one batched product after the inverse (2.4x faster here than
            # torch.linalg.solve's LU with K right-hand sides at P = 41, K = 288), and the hat
            # diagonal a product of two contiguous (B, K, P) tensors
            inverse = torch.linalg.inv if torch.is_grad_enabled() else _spd_inverse
            phi_a = phi @ inverse(gram)
            d = (r.unsqueeze(1) @ phi_a).squeeze(1)
            hat = torch.einsum("bkp,bkp->bk", phi, phi_a)  # (B, K)
            a_phi = phi_a.transpose(1, 2)  # (B, P, K), a view for the trim's few series
            resid_loo = (r - (phi @ d.unsqueeze(-1)).squeeze(-1)) / (1 - hat) * ms
            if trim is not None:
                idx, act = _outliers(resid_loo, ms, trim)
                sub = act.any(1).nonzero().squeeze(1)  # only these series go through the rounds
                if len(sub):
                    d, resid_loo = d.clone(), resid_loo.clone()
                    refit = (
                        _trim_primal if idx.shape[1] <= ROUNDS_ONE_BY_ONE else _trim_primal_block
                    )
                    d[sub], resid_loo[sub] = refit(
                        d[sub], a_phi[sub], hat[sub], phi[sub], r[sub], ms[sub], idx[sub], act[sub]
                    )
        else:
            d = torch.linalg.solve(gram, phi.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
    w, b = w0.reshape(1, -1) + d[:, :H], b0.reshape(()) + d[:, H]
    return (w, b, resid_loo) if loo else (w, b)


def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    """The inverses of a batch of symmetric positive-definite matrices (B, n, n) from their
    Cholesky factors: L^-T L^-1, with L^-1 by one batched triangular solve (1.8x faster on
    the CPU than ``torch.linalg.inv``'s LU at n = 41). A matrix that is not numerically
    positive definite gives NaN (a failed fit for the caller), never an exception."""
    low, info = torch.linalg.cholesky_ex(a)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    inv_low = torch.linalg.solve_triangular(low, eye, upper=False)
    inv = inv_low.transpose(1, 2) @ inv_low
    nan = torch.full((), float("nan"), dtype=a.dtype, device=a.device)
    return torch.where((info == 0)[:, None, None], inv, nan)


def trim_rounds(k: int) -> int:
    """At most this many support points of K are left out by ``ridge_head``'s ``trim``
    (one in eight: 3 of 24, 6 of 48)."""
    return max(1, k // 8)


def _outliers(
    loo: torch.Tensor, ms: torch.Tensor, trim: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The support points to leave out, largest first: indices (B, R) and whether each is
    one (B, R) (beyond ``trim`` robust scales of the series' leave-one-out residuals)."""
    size = loo.abs() * ms
    beyond = size > trim * robust_sigma(loo, ms).unsqueeze(1)
    top, idx = torch.topk(
        torch.where(beyond, size, torch.zeros_like(size)), trim_rounds(loo.shape[1]), dim=1
    )
    return idx, top > 0


def _trim_kernel(
    alpha: torch.Tensor, inv_diag: torch.Tensor, cols: torch.Tensor, gram: torch.Tensor,
    r: torch.Tensor, ms: torch.Tensor, idx: torch.Tensor, act: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The kernel form's refit without support outliers: (alpha, residuals), both (S, K),
    for the S series that have points to leave out (``idx``, ``act``: ``_outliers``'; one
    with fewer than the rounds passes the rest unchanged). ``inv_diag``: G^-1's diagonal,
    ``cols`` (S, K, R): G^-1's columns ``idx``.

    Leaving point i out of G alpha = r gives alpha - u alpha_i / u_i with u = G^-1 e_i, and
    the inverse of the smaller system is G^-1 - u u^T / u_i (zero in row and column i): a
    rank-one downdate per round, each round's column corrected by the previous rounds'
    downdates; no second factorisation."""
    S, K = alpha.shape
    rows = torch.arange(S, device=alpha.device)
    removed = torch.zeros_like(ms, dtype=torch.bool)
    done: list[tuple[torch.Tensor, torch.Tensor]] = []  # (u, u_i) of each round
    for t in range(idx.shape[1]):
        i, on = idx[:, t], act[:, t]
        u = cols[:, :, t]  # (S, K): column i of G^-1 ...
        for u_s, d_s in done:  # ... of the inverse after the previous rounds' downdates
            u = u - u_s * (u_s[rows, i] / d_s).unsqueeze(1)
        d = u[rows, i]
        u = torch.where(on.unsqueeze(1), u, torch.zeros_like(u))  # nothing (more) to leave out
        alpha = alpha - u * (alpha[rows, i] / d).unsqueeze(1)
        inv_diag = inv_diag - u * u / d.unsqueeze(1)
        removed = removed | (F.one_hot(i, K).bool() & on.unsqueeze(1))
        done.append((u, d))
    alpha = torch.where(removed, torch.zeros_like(alpha), alpha)
    # a left-out point's residual under the refit: r_i - sum_j K_ij alpha_j (alpha_i is 0,
    # so G's diagonal, the kernel's plus the penalty, does not enter), the sum column by
    # column (tiny batched products cost more, and sums over an axis round differently
    # with the batch's size); the others' leave-one-out residual alpha_j / (the smaller
    # system's inverse)_jj
    g_rows = torch.gather(gram, 1, idx.unsqueeze(-1).expand(-1, -1, K))  # (S, R, K)
    fitted = g_rows[:, :, 0] * alpha[:, :1]
    for j in range(1, K):
        fitted = fitted + g_rows[:, :, j] * alpha[:, j : j + 1]
    resid = alpha / torch.where(removed, 1.0, inv_diag)
    left = torch.gather(r, 1, idx) - fitted  # (S, R)
    resid = resid.scatter(1, idx, torch.where(act, left, torch.gather(resid, 1, idx)))
    return alpha, resid * ms


def _trim_primal(
    d: torch.Tensor, a_phi: torch.Tensor, hat: torch.Tensor, phi: torch.Tensor, r: torch.Tensor,
    ms: torch.Tensor, idx: torch.Tensor, act: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The primal form's refit without support outliers: (d (B, P), residuals (B, K)).

    With A = Phi^T Phi + lam I, a = A^-1 Phi^T, hat_ii = phi_i a_i and in-sample residuals
    e: leaving point i out moves d by -a_i e_i / (1 - hat_ii) (Sherman-Morrison), every
    residual by P_ji e_i / (1 - hat_ii) (P = Phi a, the hat matrix) and a, hat alike; one
    round costs a few (P, K) products per series, no second solve."""
    B, K, P = phi.shape
    rows = torch.arange(B, device=d.device)
    e = r - (phi @ d.unsqueeze(-1)).squeeze(-1)  # in-sample residuals
    removed = torch.zeros_like(ms, dtype=torch.bool)
    for t in range(idx.shape[1]):
        i, on = idx[:, t], act[:, t]
        a_i = a_phi[rows, :, i]  # (B, P)
        p_i = (phi[rows, i].unsqueeze(-1) * a_phi).sum(1)  # (B, K): row i of the hat matrix
        coef = torch.where(on, 1.0 / (1 - hat[rows, i]), torch.zeros_like(hat[:, 0]))
        e_i = e[rows, i] * coef
        d = d - a_i * e_i.unsqueeze(1)
        e = e + p_i * e_i.unsqueeze(1)  # the left-out point's becomes its out-of-sample one
        a_phi = a_phi + a_i.unsqueeze(2) * (p_i * coef.unsqueeze(1)).unsqueeze(1)
        hat = hat + p_i * p_i * coef.unsqueeze(1)
        removed = removed | (F.one_hot(i, K).bool() & on.unsqueeze(1))
    resid = torch.where(removed, e, e / torch.where(removed, 1.0, 1 - hat))
    return d, resid * ms


# up to this many points to leave out, the primal refit removes them one by one; more (a
# long support: K = 288 at 5 minutes leaves out up to 36), all at once
ROUNDS_ONE_BY_ONE = 6


def _trim_primal_block(
    d: torch.Tensor, a_phi: torch.Tensor, hat: torch.Tensor, phi: torch.Tensor, r: torch.Tensor,
    ms: torch.Tensor, idx: torch.Tensor, act: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``_trim_primal``'s refit with every point of ``idx`` (where ``act``) left out at once:
    the same result (Woodbury's identity for R points instead of R rank-one steps), in
    batched products of (K, R) and one (R, R) solve per series instead of R rounds over
    (P, K) matrices. With M = I - H_RR (the hat matrix's rows and columns of those points),
    x = M^-1 e_R: d moves by -a_R x, the residuals by P_R x (a left-out point's becomes x,
    its out-of-sample residual), the hat diagonal by diag(P_R M^-1 P_R^T)."""
    B, K, P = phi.shape
    R = idx.shape[1]
    m = act.to(phi.dtype)  # (B, R): 0 for a slot with nothing to leave out
    e = r - (phi @ d.unsqueeze(-1)).squeeze(-1)  # in-sample residuals
    a_r = torch.gather(a_phi, 2, idx.unsqueeze(1).expand(-1, P, -1)) * m.unsqueeze(1)  # (B, P, R)
    p_r = phi @ a_r  # (B, K, R): the hat matrix's columns of the points left out
    h_rr = torch.gather(p_r, 1, idx.unsqueeze(-1).expand(-1, -1, R)) * m.unsqueeze(2)
    eye = torch.eye(R, dtype=phi.dtype, device=phi.device)
    m_inv = torch.linalg.inv(eye - h_rr)  # (B, R, R)
    x = (m_inv @ (torch.gather(e, 1, idx) * m).unsqueeze(-1)).squeeze(-1)
    d = d - (a_r @ x.unsqueeze(-1)).squeeze(-1)
    e = e + (p_r @ x.unsqueeze(-1)).squeeze(-1)
    hat = hat + ((p_r @ m_inv) * p_r).sum(-1)
    removed = torch.zeros_like(ms, dtype=torch.bool).scatter(1, idx, act)
    resid = torch.where(removed, e, e / torch.where(removed, 1.0, 1 - hat))
    return d, resid * ms


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
