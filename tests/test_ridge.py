"""The closed-form ridge head (``algorithm="ridge"``): its solver, its leave-one-out
residuals, the nightly path against the reference, and training."""

import math

import pytest
import torch

from tsmeta.forecaster import hidden_features, init_params
from tsmeta.meta.batched import adapt_predict, head_only
from tsmeta.meta.linalg import spd_solve
from tsmeta.meta.maml import RIDGE, adapt_batch, predict_batch, ridge_head
from tsmeta.meta.tasks import TaskBatch
from tsmeta.meta.train import MetaConfig, MetaLearner


def _batch(B, K, N, F, seed=0, dtype=torch.float64, missing=0.2):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    ms = (torch.rand(B, K, generator=g) >= missing).to(dtype)
    ms[:, :3] = 1  # every task keeps a few points
    return TaskBatch(r(B, K, F), r(B, K), ms, r(B, N, F), r(B, N), torch.ones(B, N, dtype=dtype),
                     r(B), torch.ones(B, dtype=dtype))  # fmt: skip


def _reference_ridge(h, y, m, w0, b0, lam):
    """One series by the normal equations on its observed points alone, penalty ``lam``:
    the head's weights and bias as one vector."""
    keep = m > 0
    phi = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)[keep]
    theta0 = torch.cat([w0.reshape(-1), b0.reshape(1)])
    a = phi.T @ phi + lam * torch.eye(phi.shape[1], dtype=h.dtype)
    return theta0 + torch.linalg.solve(a, phi.T @ (y[keep] - phi @ theta0))


@pytest.mark.parametrize("n", [1, 3, 24, 41])
def test_the_vectorised_cholesky_solves_and_inverts_like_lapack(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(64, n, n, generator=g, dtype=torch.float64)
    a = x @ x.transpose(1, 2) + 0.1 * torch.eye(n, dtype=torch.float64)
    r = torch.randn(64, n, generator=g, dtype=torch.float64)
    a0, r0 = a.clone(), r.clone()
    sol, inv_diag = spd_solve(a, r, inverse_diagonal=True)
    assert torch.equal(a, a0) and torch.equal(r, r0)  # the inputs are left as they were
    torch.testing.assert_close(sol, torch.linalg.solve(a, r.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(inv_diag, torch.diagonal(torch.linalg.inv(a), dim1=1, dim2=2))
    assert spd_solve(a, r)[1] is None


def test_a_matrix_that_is_not_positive_definite_gives_nan_rows_not_an_exception():
    a = torch.eye(3).repeat(2, 1, 1)
    a[1, 2, 2] = -1.0
    sol, _ = spd_solve(a, torch.ones(2, 3))
    assert torch.equal(sol[0], torch.ones(3)) and torch.isnan(sol[1]).all()


@pytest.mark.parametrize("k", [6, 30])  # the kernel form (K <= H + 1) and the primal one
def test_ridge_head_and_its_leave_one_out_residuals_equal_refits(k):
    b = _batch(4, k, 5, 8, seed=k)
    params = {
        n: v.double() for n, v in init_params(8, 10, torch.Generator().manual_seed(3)).items()
    }
    h = hidden_features(params, b.xs)
    w, bias, loo = ridge_head(h, b.ys, b.ms, params["w3"], params["b3"], math.log(0.3), loo=True)
    for i in range(4):
        lam = 0.3 * b.ms[i].sum()  # the penalty times the observed count
        theta = _reference_ridge(h[i], b.ys[i], b.ms[i], params["w3"], params["b3"], lam)
        torch.testing.assert_close(w[i], theta[:-1])
        torch.testing.assert_close(bias[i], theta[-1])
        for j in range(k):  # leave point j out (same penalty), predict it
            if b.ms[i, j] == 0:
                assert loo[i, j] == 0
                continue
            m = b.ms[i].clone()
            m[j] = 0
            refit = _reference_ridge(h[i], b.ys[i], m, params["w3"], params["b3"], lam)
            torch.testing.assert_close(loo[i, j], b.ys[i, j] - h[i, j] @ refit[:-1] - refit[-1])


def test_scoring_and_training_solve_the_same_ridge():
    """The nightly path (vectorised Cholesky, no autograd) equals the differentiable one."""
    b = _batch(16, 24, 24, 8, dtype=torch.float32)
    params = init_params(8, 40, torch.Generator().manual_seed(4))
    h = hidden_features(params, b.xs)
    log_pen = torch.tensor(math.log(0.05), requires_grad=True)
    w_t, b_t, loo_t = ridge_head(h, b.ys, b.ms, params["w3"], params["b3"], log_pen, loo=True)
    with torch.no_grad():
        w_s, b_s, loo_s = ridge_head(h, b.ys, b.ms, params["w3"], params["b3"], log_pen, loo=True)
    for fast, slow in ((w_s, w_t), (b_s, b_t), (loo_s, loo_t)):
        torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-4)


def test_the_nightly_ridge_path_equals_the_vmap_reference():
    b = _batch(40, 24, 12, 8)
    params = {
        n: v.double() for n, v in init_params(8, 16, torch.Generator().manual_seed(5)).items()
    }
    rates = {RIDGE: torch.tensor(math.log(0.1), dtype=torch.float64)}
    assert head_only(rates)  # shared hidden layers: one scoring thread by default
    fast = adapt_batch(params, b, 1, rates)
    ref_q = predict_batch(fast, b.xq)
    for name in ("w1", "b1", "w2", "b2"):  # the hidden layers are never adapted
        torch.testing.assert_close(fast[name][0], params[name])
    with torch.no_grad():
        ps, pq = adapt_predict(params, b.xs, b.ys, b.ms, b.xq, 1, rates, chunk=16)
    torch.testing.assert_close(pq, ref_q)
    # support "predictions" are leave-one-out: never closer than the in-sample fit
    in_sample = predict_batch(fast, b.xs)
    err = lambda p: ((p - b.ys) ** 2 * b.ms).sum(1)  # noqa: E731
    assert (err(ps) >= err(in_sample) - 1e-9).all() and (err(ps) > err(in_sample)).any()


@pytest.mark.parametrize("hidden", [16, 40])  # K = 24 points: the primal form, the kernel one
def test_ridge_learns_its_penalty_and_the_shared_layers(hidden):
    cfg = MetaConfig(algorithm="ridge", inner_lr=0.1, meta_lr=1e-2)
    learner = MetaLearner(init_params(8, hidden, torch.Generator().manual_seed(6)), cfg)
    before = float(learner.rates[RIDGE].detach())
    assert before == pytest.approx(math.log(0.1))
    b = _batch(8, 24, 12, 8, dtype=torch.float32)
    learner.loss(b).backward()
    assert learner.rates[RIDGE].grad is not None and learner.rates[RIDGE].grad != 0
    for k, p in learner.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, k
    learner.step(b)
    assert float(learner.rates[RIDGE].detach()) != before


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_the_ridge_path_gives_the_same_bits_in_any_chunk_size(chunk):
    """Nightly rows must not depend on how series are batched (test_faults checks the
    stored rows): the head's sums run in an order independent of the chunk's size."""
    b = _batch(200, 24, 24, 8, dtype=torch.float32)
    params = init_params(8, 40, torch.Generator().manual_seed(7))
    rates = {RIDGE: torch.tensor(math.log(0.05))}
    with torch.no_grad():
        whole = adapt_predict(params, b.xs, b.ys, b.ms, b.xq, 1, rates)
        parts = adapt_predict(params, b.xs, b.ys, b.ms, b.xq, 1, rates, chunk=chunk)
    assert torch.equal(whole[0], parts[0]) and torch.equal(whole[1], parts[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU worker)")
def test_the_ridge_head_on_cuda_equals_the_cpu():
    """The vectorised Cholesky, the leave-one-out residuals and the nightly path on a GPU
    (float32, as scoring runs) against the CPU's."""
    b = _batch(4096, 24, 24, 8, dtype=torch.float32)
    params = init_params(8, 40, torch.Generator().manual_seed(8))
    rates = {RIDGE: torch.tensor(math.log(0.1))}
    gpu = lambda t: t.cuda()  # noqa: E731
    with torch.no_grad():
        cpu_out = adapt_predict(params, b.xs, b.ys, b.ms, b.xq, 1, rates)
        cuda_out = adapt_predict({k: gpu(v) for k, v in params.items()}, gpu(b.xs), gpu(b.ys),
                                 gpu(b.ms), gpu(b.xq), 1, {RIDGE: gpu(rates[RIDGE])})  # fmt: skip
    for c, g in zip(cpu_out, cuda_out, strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=1e-4, atol=1e-4 * float(c.abs().max()))
    a = torch.randn(256, 24, 24, dtype=torch.float64)
    a = a @ a.transpose(1, 2) + 0.1 * torch.eye(24, dtype=torch.float64)
    r = torch.randn(256, 24, dtype=torch.float64)
    sol, inv_diag = spd_solve(a.cuda(), r.cuda(), inverse_diagonal=True)
    torch.testing.assert_close(sol.cpu(), torch.linalg.solve(a, r.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(inv_diag.cpu(), torch.diagonal(torch.linalg.inv(a), dim1=1, dim2=2))
