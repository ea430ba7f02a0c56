"""The closed-form ridge head (``algorithm="ridge"``): its solver, its leave-one-out
residuals, the nightly path against the reference, and training."""

import math

import pytest
import torch

from tsmeta.forecaster import hidden_features, init_params
from tsmeta.meta.batched import adapt_predict, head_only
from tsmeta.meta.linalg import spd_solve
from tsmeta.meta.maml import (
    RIDGE,
    _spd_inverse,
    adapt_batch,
    predict_batch,
    ridge_head,
    trim_rounds,
)
from tsmeta.meta.tasks import TaskBatch, robust_sigma
from tsmeta.meta.train import MetaConfig, MetaLearner, MetaModel


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


def test_the_cholesky_inverse_inverts_and_gives_nan_where_not_positive_definite():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 41, 41, generator=g, dtype=torch.float64)
    a = x @ x.transpose(1, 2) + 0.1 * torch.eye(41, dtype=torch.float64)
    torch.testing.assert_close(_spd_inverse(a), torch.linalg.inv(a))
    a[3, 5, 5] = -1.0
    inv = _spd_inverse(a)
    assert torch.isnan(inv[3]).all() and not torch.isnan(inv[[0, 1, 2, 4, 5, 6, 7]]).any()


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


def _spiked(b, seed, share=0.08, size=8.0):
    """The batch's support targets with spikes of ``size`` on about ``share`` of points."""
    g = torch.Generator().manual_seed(seed)
    hit = (torch.rand(b.ys.shape, generator=g) < share).to(b.ys.dtype)
    return b.ys + hit * size * torch.randn(b.ys.shape, generator=g, dtype=b.ys.dtype).sign()


# the kernel form (K <= H + 1: its downdates of the inverse), the primal one (Sherman-
# Morrison on the features' system, point by point; beyond ROUNDS_ONE_BY_ONE points, all
# at once: K = 96 leaves out up to 12); with autograd (torch.linalg's inverse) and without
# (the vectorised Cholesky's inverse factor)
@pytest.mark.parametrize("k,hidden,grad", [(6, 10, False), (24, 40, False), (24, 40, True),
                                           (30, 10, False), (48, 10, True), (96, 10, False),
                                           (96, 10, True)])  # fmt: skip
def test_the_trimmed_ridge_head_equals_refits_without_its_outliers(k, hidden, grad):
    """``trim``: the points beyond 3 robust scales of the leave-one-out residuals, at most
    one in eight, the largest first, are left out at the same penalty; each left-out point
    reports its residual under the refit, each other point its leave-one-out residual
    under it: all against refits by the normal equations, series by series."""
    b = _batch(48, k, 5, 8, seed=k)
    ys = _spiked(b, k + 1)
    params = {
        n: v.double() for n, v in init_params(8, hidden, torch.Generator().manual_seed(3)).items()
    }
    h = hidden_features(params, b.xs)
    with torch.enable_grad() if grad else torch.no_grad():
        _, _, loo = ridge_head(h, ys, b.ms, params["w3"], params["b3"], math.log(0.3), loo=True)
        w, bias, res = ridge_head(h, ys, b.ms, params["w3"], params["b3"], math.log(0.3), trim=3.0)
    w, bias, res, loo = (t.detach() for t in (w, bias, res, loo))
    scale = robust_sigma(loo, b.ms)
    left_out = 0
    for i in range(len(ys)):
        size = loo[i].abs() * b.ms[i]
        beyond = (size > 3.0 * scale[i]).nonzero().squeeze(1)
        out = beyond[size[beyond].argsort(descending=True)][: trim_rounds(k)]
        left_out += len(out)
        m = b.ms[i].clone()
        m[out] = 0
        lam = 0.3 * b.ms[i].sum()  # the penalty of the full support
        theta = _reference_ridge(h[i], ys[i], m, params["w3"], params["b3"], lam).detach()
        torch.testing.assert_close(w[i], theta[:-1])
        torch.testing.assert_close(bias[i], theta[-1])
        for j in range(k):
            if b.ms[i, j] == 0:
                assert res[i, j] == 0
                continue
            fit = theta
            if m[j] > 0:  # a kept point: leave it out of the refit too
                m_j = m.clone()
                m_j[j] = 0
                fit = _reference_ridge(h[i], ys[i], m_j, params["w3"], params["b3"], lam).detach()
            torch.testing.assert_close(res[i, j], ys[i, j] - h[i, j] @ fit[:-1] - fit[-1])
    assert left_out >= len(ys) // 4  # the spikes left something out of many series


@pytest.mark.parametrize("k,hidden", [(24, 40), (48, 10)])
def test_trimming_keeps_a_support_spike_out_of_the_forecast(k, hidden):
    """A spike in the support pulls the untrimmed head towards it; the trimmed head
    forecasts the query about as the head fitted to the clean support does, and a support with
    nothing beyond the cut comes out as untrimmed, bit for bit."""
    b = _batch(64, k, 12, 8, seed=11, missing=0.0)
    params = {
        n: v.double() for n, v in init_params(8, hidden, torch.Generator().manual_seed(3)).items()
    }
    hs, hq = hidden_features(params, b.xs), hidden_features(params, b.xq)
    pen = math.log(0.02)
    w0, b0 = params["w3"], params["b3"]
    # clean targets the shared features explain well, then one spike in each support
    truth = hs @ torch.randn(hidden, 1, generator=torch.Generator().manual_seed(2),
                             dtype=torch.float64).squeeze(-1)  # fmt: skip
    clean = truth + 0.05 * b.ys
    spiked = clean.clone()
    spiked[:, k // 2] += 5.0
    query = lambda w, c: (hq * w.unsqueeze(1)).sum(-1) + c.unsqueeze(1)  # noqa: E731
    with torch.no_grad():
        ref = query(*ridge_head(hs, clean, b.ms, w0, b0, pen))
        plain = query(*ridge_head(hs, spiked, b.ms, w0, b0, pen))
        trimmed = ridge_head(hs, spiked, b.ms, w0, b0, pen, trim=3.0)
        untouched = ridge_head(hs, clean, b.ms, w0, b0, pen, trim=1e9)
        loo = ridge_head(hs, clean, b.ms, w0, b0, pen, loo=True)
    err = lambda p: (p - ref).abs().mean(1)  # noqa: E731
    e_trim, e_plain = err(query(*trimmed[:2])), err(plain)
    # (a few series also lose a clean point beyond the cut: 24 points, 41 features)
    assert (e_trim < e_plain).float().mean() > 0.9 and e_trim.mean() < 0.25 * e_plain.mean()
    # the spike itself is left out, and reports most of its size as its residual
    assert (trimmed[2][:, k // 2] > 3.0).all()
    for a, c in zip(untouched, loo, strict=True):
        assert torch.equal(a, c)


def test_trim_is_a_model_setting_older_models_load_without():
    assert MetaConfig().trim == 3.0
    with pytest.raises(ValueError, match="trim must be a positive number"):
        MetaConfig(trim=0.0)
    b = _batch(4, 24, 4, 8)
    from tsmeta.forecaster import FeatureSpec
    from tsmeta.scoring import fit_tail

    model = MetaModel(init_params(8, 40, torch.Generator().manual_seed(0)), FeatureSpec(period=24),
                      MetaConfig(algorithm="ridge"), fit_tail(b.ys.abs().numpy().ravel()))  # fmt: skip
    state = model.state()
    assert MetaModel.from_state(state).config.trim == 3.0
    del state["config"]["trim"]  # a model saved before trimming was scored without it
    assert MetaModel.from_state(state).config.trim is None


@pytest.mark.parametrize("k,hidden", [(24, 40), (96, 10)])  # the kernel form, the primal one
def test_scoring_and_training_solve_the_same_ridge(k, hidden):
    """The nightly path (vectorised Cholesky or Cholesky inverse, no autograd) equals the
    differentiable one (torch.linalg)."""
    b = _batch(16, k, 24, 8, dtype=torch.float32)
    params = init_params(8, hidden, torch.Generator().manual_seed(4))
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
@pytest.mark.parametrize("trim", [None, 3.0])
def test_the_ridge_path_gives_the_same_bits_in_any_chunk_size(chunk, trim):
    """Nightly rows must not depend on how series are batched (test_faults checks the
    stored rows): the head's sums run in an order independent of the chunk's size."""
    b = _batch(200, 24, 24, 8, dtype=torch.float32)
    ys = _spiked(b, 9) if trim else b.ys
    params = init_params(8, 40, torch.Generator().manual_seed(7))
    rates = {RIDGE: torch.tensor(math.log(0.05))}
    with torch.no_grad():
        whole = adapt_predict(params, b.xs, ys, b.ms, b.xq, 1, rates, trim=trim)
        parts = adapt_predict(params, b.xs, ys, b.ms, b.xq, 1, rates, chunk=chunk, trim=trim)
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
