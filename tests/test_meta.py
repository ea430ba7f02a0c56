import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tsmeta.data.panel import build_panel
from tsmeta.data.synthetic import generate_frame
from tsmeta.forecaster import FeatureSpec, init_params, masked_mse, mlp
from tsmeta.meta.maml import adapt, adapt_batch, maml_loss, predict_batch
from tsmeta.meta.tasks import earliest_cut, make_batch, sample_tasks
from tsmeta.meta.train import MetaConfig, MetaModel, meta_train
from tsmeta.scoring import TailModel
from tsmeta.scoring.combine import NAIVE_VETO_SCALE


def tiny_batch(dtype=torch.float64, B=3, K=6, H=4, F=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    from tsmeta.meta.tasks import TaskBatch

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    ones = lambda *s: torch.ones(*s, dtype=dtype)  # noqa: E731
    return TaskBatch(
        r(B, K, F), r(B, K), ones(B, K), r(B, H, F), r(B, H), ones(B, H), r(B), ones(B)
    )


def test_second_order_gradient_matches_finite_differences():
    batch = tiny_batch()
    params = {
        k: v.double()
        for k, v in init_params(4, hidden=5, generator=torch.Generator().manual_seed(1)).items()
    }
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    maml_loss(leaf, batch, steps=2, lr=0.3).backward()
    eps = 1e-6
    for name in ("w1", "b2", "w3"):
        flat = params[name].reshape(-1)
        for idx in range(min(3, flat.numel())):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[idx] += eps
            minus[name].view(-1)[idx] -= eps
            fd = (maml_loss(plus, batch, 2, 0.3) - maml_loss(minus, batch, 2, 0.3)) / (2 * eps)
            assert leaf[name].grad.reshape(-1)[idx].item() == pytest.approx(
                fd.item(), rel=1e-5, abs=1e-9
            )


def test_first_order_gradient_is_query_gradient_at_adapted_params():
    batch = tiny_batch(B=1)
    params = {
        k: v.double()
        for k, v in init_params(4, hidden=5, generator=torch.Generator().manual_seed(2)).items()
    }
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    maml_loss(leaf, batch, 2, 0.3, first_order=True).backward()
    fast = adapt(params, batch.xs[0], batch.ys[0], batch.ms[0], 2, 0.3)
    fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
    masked_mse(fast, batch.xq[0], batch.yq[0], batch.mq[0]).backward()
    for k in params:
        torch.testing.assert_close(leaf[k].grad, fast[k].grad)


def test_batched_adaptation_equals_per_task_loop():
    batch = tiny_batch(dtype=torch.float32, B=5)
    params = init_params(4, hidden=8, generator=torch.Generator().manual_seed(3))
    fast = adapt_batch(params, batch, steps=3, lr=0.1)
    pred = predict_batch(fast, batch.xq)
    for b in range(5):
        one = adapt(params, batch.xs[b], batch.ys[b], batch.ms[b], 3, 0.1)
        torch.testing.assert_close(pred[b], mlp(one, batch.xq[b]), rtol=1e-5, atol=1e-6)
        # adaptation lowers the support loss
        assert masked_mse(one, batch.xs[b], batch.ys[b], batch.ms[b]) < masked_mse(
            params, batch.xs[b], batch.ys[b], batch.ms[b]
        )


def test_tasks_cut_support_before_query_and_align_to_midnight():
    n, T, start_step = 4, 24 * 10, 24 * 1000
    values = torch.arange(T, dtype=torch.float32).repeat(n, 1) + torch.arange(n)[:, None] * 1000.0
    mask = torch.ones(n, T, dtype=torch.bool)
    spec = FeatureSpec(24)
    batch = sample_tasks(
        values, mask, 50, spec, 24, 24, start_step, torch.Generator().manual_seed(0), cut_every=24
    )
    support = batch.ys * batch.scale[:, None] + batch.loc[:, None]
    query = batch.yq * batch.scale[:, None] + batch.loc[:, None]
    # values are the column index (+1000 per row): support ends right before the query
    torch.testing.assert_close(query[:, 0] - support[:, -1], torch.ones(50), rtol=0, atol=1e-3)
    t0 = (query[:, 0] % 1000).round().long()
    assert ((t0 + start_step) % 24 == 0).all() and (t0 >= 48).all()
    # seasonal-lag feature is the normalised value one period earlier
    lag = batch.xs[..., 6] * batch.scale[:, None] + batch.loc[:, None]
    torch.testing.assert_close(support - lag, torch.full_like(lag, 24.0), rtol=0, atol=1e-2)


def test_make_batch_marks_missing_and_future_points_unobserved():
    values = torch.randn(2, 100)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[0, 70] = False
    b = make_batch(
        values, mask, torch.tensor([0, 1]), torch.tensor([90, 90]), FeatureSpec(24), 24, 24, 0
    )
    assert b.mq[:, 10:].sum() == 0  # columns past the window
    assert b.ms[0, 70 - 66] == 0 and b.ms[1].all()


@pytest.mark.parametrize("same_cut", [True, False])
def test_a_support_mostly_unobserved_is_the_one_a_period_earlier(same_cut):
    """A series that observed under half of its K points before the cut (a gap in its
    data) adapts from the K points one period earlier where at least half of those were
    observed: the support of the series cut a period earlier (the same features, targets,
    normalisation and spread); the query is still tonight's."""
    spec = FeatureSpec(24, relative_to_lag=True, lag_periods=3, lag_spare=1, second_lag=168,
                       veto_lag=168)  # fmt: skip
    g = torch.Generator().manual_seed(5)
    values = 10.0 + torch.randn(4, 700, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 700, dtype=torch.bool)
    cut = 650
    seen = mask.clone()
    seen[0, cut - 24 : cut - 11] = False  # 11 of 24 observed: under half
    seen[1, cut - 24 : cut - 12] = False  # 12 of 24: half, its own support
    seen[2, cut - 24 : cut] = False  # none, and under half of the period before:
    seen[2, cut - 48 : cut - 35] = False  # no support to move to
    gappy = torch.where(seen, values, torch.full((), float("nan"), dtype=values.dtype))
    t0 = torch.full((4,), cut)
    if not same_cut:
        t0[3] = cut - 5
    b = make_batch(gappy, seen, torch.arange(4), t0, spec, 24, 24, 0)
    early = make_batch(values, mask, torch.tensor([0]), torch.tensor([cut - 24]), spec, 24, 24, 0)
    for name in ("xs", "ys", "ms", "loc", "scale", "base_s", "spread"):
        torch.testing.assert_close(getattr(b, name)[:1], getattr(early, name))
    torch.testing.assert_close(b.forecast(b.yq)[0], values[0, cut : cut + 24])  # tonight's
    assert int(b.night_step[0]) == cut
    assert b.ms[1].sum() == 12 and not b.ms[1, :12].any()  # its own support, with its gap
    assert b.ms[2].sum() == 0  # nothing to adapt from: unscored, as before
    assert b.ms[3].all()


@pytest.mark.parametrize("relative", [False, True])
def test_a_horizon_longer_than_the_period_never_reads_what_it_forecasts(relative):
    spec = FeatureSpec(24, relative_to_lag=relative)
    values = torch.randn(3, 200)
    mask = torch.ones(3, 200, dtype=torch.bool)
    rows, cut = torch.arange(3), torch.full((3,), 150)
    a = make_batch(values, mask, rows, cut, spec, 24, 48, 0)
    future = values.clone()
    future[:, 150:] = torch.randn(3, 50) * 100  # what happens after the cut
    b = make_batch(future, mask, rows, cut, spec, 24, 48, 0)
    torch.testing.assert_close(a.xq, b.xq)
    torch.testing.assert_close(a.xs, b.xs)
    # the lag of a point in the second day of the horizon is two days back
    lag = a.xq[0, 30, 2 * spec.harmonics] * a.scale[0] + a.loc[0]
    torch.testing.assert_close(lag, values[0, 150 + 30 - 48])
    if relative:  # predicting zero is the seasonal naive forecast
        naive = a.forecast(torch.zeros_like(a.yq))
        expect = values[:, 126:150].repeat(1, 2)
        torch.testing.assert_close(naive, expect, rtol=1e-5, atol=1e-5)
        # and targets are the change from it
        torch.testing.assert_close(a.forecast(a.yq), values[:, 150:198], rtol=1e-4, atol=1e-4)


def test_relative_targets_are_the_change_from_the_median_of_the_lag_periods():
    """With lag_periods = 3 the targets' base is the lagged input, the median of the same
    phase over the last 3 periods: yesterday's spike is no base for today. Models saved
    before it (median_base False) keep the single most recent value."""
    g = torch.Generator().manual_seed(4)
    values = 10.0 + torch.randn(2, 200, generator=g, dtype=torch.float64)
    values[0, 150 - 24 + 5] += 50.0  # a spike yesterday, at hour 5 of the scored day
    mask = torch.ones(2, 200, dtype=torch.bool)
    rows, cut = torch.arange(2), torch.full((2,), 150)
    spec = FeatureSpec(24, relative_to_lag=True, lag_periods=3)
    b = make_batch(values, mask, rows, cut, spec, 24, 24, 0)
    days = torch.stack([values[:, 150 - 24 * d : 174 - 24 * d] for d in (1, 2, 3)])
    expect = days.median(0).values  # three values: no ties to average
    torch.testing.assert_close(b.forecast(torch.zeros_like(b.yq)), expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.forecast(b.yq), values[:, 150:174], rtol=1e-4, atol=1e-4)
    assert abs(float(b.forecast(torch.zeros_like(b.yq))[0, 5]) - 10.0) < 5.0  # not the spike
    old = make_batch(values, mask, rows, cut, replace(spec, median_base=False), 24, 24, 0)
    torch.testing.assert_close(old.forecast(torch.zeros_like(old.yq)), days[0], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    state = MetaModel(init_params(spec.n_features, 4), spec, MetaConfig(algorithm="ridge"),
                      TailModel(1.0, 5.0)).state()  # fmt: skip
    assert MetaModel.from_state(state).spec.median_base
    state["spec"].pop("median_base")
    assert not MetaModel.from_state(state).spec.median_base


def test_the_second_lag_input_is_the_week_before_known_at_the_cut():
    """FeatureSpec.second_lag: two more inputs (the value second_lag steps back, the most
    recent such one known at the cut, and its observed flag); the window must reach it."""
    g = torch.Generator().manual_seed(3)
    T, t0, K, H = 420, 380, 24, 40
    values = torch.randn(2, T, generator=g, dtype=torch.float64)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, t0 + 5 - 168] = False  # one reference missing
    spec = FeatureSpec(24, second_lag=168)
    assert spec.n_features == FeatureSpec(24).n_features + 2
    assert earliest_cut(spec, K) == K + 168 and earliest_cut(FeatureSpec(24), K) == K + 24
    rows, cut = torch.arange(2), torch.full((2,), t0)
    b = make_batch(values, mask, rows, cut, spec, K, H, 0)
    plain = make_batch(values, mask, rows, cut, FeatureSpec(24), K, H, 0)
    torch.testing.assert_close(b.xs[..., :-2], plain.xs)  # the other inputs unchanged
    torch.testing.assert_close(b.xq[..., :-2], plain.xq)
    week = b.xq[..., -2] * b.scale[:, None] + b.loc[:, None]
    expect = values[:, t0 - 168 : t0 - 168 + H]
    ok = b.xq[..., -1] > 0
    assert not ok[1, 5] and ok.sum() == 2 * H - 1
    torch.testing.assert_close(week[ok], expect[ok])
    assert b.xq[1, 5, -2] == 0  # unobserved: 0, as the seasonal lag
    sup = b.xs[..., -2] * b.scale[:, None] + b.loc[:, None]
    torch.testing.assert_close(sup, values[:, t0 - K - 168 : t0 - 168])
    future = values.clone()
    future[:, t0:] = 1e3  # what happens after the cut is never read
    c = make_batch(future, mask, rows, cut, spec, K, H, 0)
    torch.testing.assert_close(c.xq, b.xq)
    with pytest.raises(ValueError, match="second_lag"):
        FeatureSpec(24, second_lag=-1)


def test_models_saved_before_the_second_lag_load_without_it():
    from tsmeta.scoring import TailModel

    tail = TailModel(1.0, 5.0)
    model = MetaModel(init_params(8, 4), FeatureSpec(24), MetaConfig(algorithm="ridge"), tail)
    state = model.state()
    state["spec"].pop("second_lag")
    loaded = MetaModel.from_state(state)
    assert loaded.spec.second_lag == 0 and loaded.spec.n_features == 8


def test_relative_targets_need_the_seasonal_lag():
    with pytest.raises(ValueError, match="seasonal_lag"):
        FeatureSpec(24, seasonal_lag=False, relative_to_lag=True)


@pytest.fixture(scope="module")
def cluster_window():
    f, _, meta = generate_frame(400, "h", 21, seed=5, anomaly_rate=0.0)
    p = build_panel(f, "h")
    rows = meta.sort("series_id")["period"].to_numpy() == 24
    return p.values[rows][:, : 20 * 24], p.mask[rows][:, : 20 * 24], p.start_step


def test_meta_training_learns_and_is_reproducible(cluster_window):
    values, mask, start_step = cluster_window
    cfg = MetaConfig(meta_steps=60, eval_every=20, meta_batch=16, val_tasks=64, seed=3)
    a = meta_train(values, mask, start_step, FeatureSpec(24), cfg)
    b = meta_train(values, mask, start_step, FeatureSpec(24), cfg)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k])
    m = a.metrics
    assert m["val_query_mse_adapted"] < m["val_query_mse_unadapted"]
    restored = MetaModel.from_state(a.state())
    assert (
        restored.spec == a.spec
        and restored.config == a.config
        and restored.calibration == a.calibration
    )


def test_meta_training_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 series"):
        meta_train(
            np.zeros((1, 500), np.float32),
            np.ones((1, 500), bool),
            0,
            FeatureSpec(24),
            MetaConfig(),
        )
    with pytest.raises(ValueError, match="too short"):
        meta_train(
            np.zeros((5, 60), np.float32), np.ones((5, 60), bool), 0, FeatureSpec(24), MetaConfig()
        )
    with pytest.raises(ValueError, match="algorithm"):
        MetaConfig(algorithm="reptile-ish")


# --- algorithms, fast path and baselines --------------------------------------------------

from tsmeta.meta.baselines import Adapted, Scratch, SeasonalNaive, query_mse  # noqa: E402
from tsmeta.meta.batched import adapt_mlp, adapt_predict, predict  # noqa: E402
from tsmeta.meta.train import MetaLearner  # noqa: E402


def random_rates(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=g) * 0.2 for k, v in params.items()}


@pytest.mark.parametrize("per_param", [False, True])
def test_explicit_batched_adaptation_equals_vmap_reference(per_param):
    batch = tiny_batch(dtype=torch.float32, B=6, K=12, H=5, F=8)
    batch.ms[1, :4] = 0  # some unobserved support points
    params = init_params(8, hidden=16, generator=torch.Generator().manual_seed(4))
    lr = random_rates(params) if per_param else 0.1
    ref = predict_batch(adapt_batch(params, batch, 4, lr), batch.xq)
    fast = predict(adapt_mlp(params, batch.xs, batch.ys, batch.ms, 4, lr), batch.xq)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    _, chunked = adapt_predict(params, batch.xs, batch.ys, batch.ms, batch.xq, 4, lr, chunk=4)
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rates", [{"w3": 0.1, "b3": 0.1}, {"w3": 0.2}])
def test_head_only_adaptation_equals_vmap_reference_and_keeps_the_hidden_layers(rates):
    batch = tiny_batch(dtype=torch.float32, B=6, K=12, H=5, F=8)
    batch.ms[1, :4] = 0
    params = init_params(8, hidden=16, generator=torch.Generator().manual_seed(4))
    fast = adapt_batch(params, batch, 4, rates)
    for k in ("w1", "b1", "w2", "b2") + (("b3",) if "b3" not in rates else ()):
        assert torch.equal(fast[k], params[k].expand_as(fast[k])), k  # not adapted
    assert not torch.equal(fast["w3"][0], params["w3"])
    ref_s, ref_q = predict_batch(fast, batch.xs), predict_batch(fast, batch.xq)
    weights = adapt_mlp(params, batch.xs, batch.ys, batch.ms, 4, rates)
    torch.testing.assert_close(predict(weights, batch.xq), ref_q, rtol=1e-5, atol=1e-5)
    ps, pq = adapt_predict(params, batch.xs, batch.ys, batch.ms, batch.xq, 4, rates, chunk=4)
    torch.testing.assert_close(ps, ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pq, ref_q, rtol=1e-5, atol=1e-5)


def test_inner_rates_naming_unknown_parameters_are_rejected():
    batch = tiny_batch(dtype=torch.float32, B=2, K=6, H=3, F=8)
    params = init_params(8, hidden=4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="lacks: \\['w9'\\]"):
        adapt_batch(params, batch, 1, {"w9": 0.1})


def test_anil_meta_gradient_reaches_the_shared_hidden_layers():
    cfg = MetaConfig(algorithm="anil", inner_steps=2, inner_lr=0.1)
    learner = MetaLearner(init_params(4, 8, torch.Generator().manual_seed(6)), cfg)
    assert learner.inner_rates == {"w3": 0.1, "b3": 0.1}
    learner.loss(tiny_batch(dtype=torch.float32)).backward()
    for k, p in learner.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, k


def test_explicit_path_rejects_other_networks():
    with pytest.raises(ValueError, match="default MLP"):
        adapt_mlp(
            {"w": torch.zeros(2)}, torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.ones(1, 2), 1, 0.1
        )


def test_first_and_second_order_agree_only_without_inner_steps():
    batch = tiny_batch()
    params = {
        k: v.double()
        for k, v in init_params(4, hidden=5, generator=torch.Generator().manual_seed(5)).items()
    }

    def grads(steps, first_order):
        leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        maml_loss(leaf, batch, steps, 0.3, first_order).backward()
        return torch.cat([leaf[k].grad.reshape(-1) for k in sorted(leaf)])

    torch.testing.assert_close(grads(0, True), grads(0, False))  # no inner step: nothing to cut
    assert not torch.allclose(grads(2, True), grads(2, False), rtol=1e-3)  # the Hessian term


def test_metasgd_rates_receive_gradients_and_move():
    cfg = MetaConfig(algorithm="metasgd", inner_steps=1, inner_lr=0.05, meta_lr=1e-2)
    learner = MetaLearner(init_params(4, 8, torch.Generator().manual_seed(6)), cfg)
    before = {k: v.detach().clone() for k, v in learner.rates.items()}
    learner.loss(tiny_batch(dtype=torch.float32)).backward()
    for k, r in learner.rates.items():
        assert r.grad is not None and r.grad.abs().sum() > 0, k
    learner.step(tiny_batch(dtype=torch.float32))
    assert any(not torch.equal(before[k], learner.rates[k]) for k in before)


def test_pretrain_fits_the_initialisation_without_an_inner_loop():
    cfg = MetaConfig(algorithm="pretrain", meta_lr=1e-2)
    learner = MetaLearner(init_params(4, 8, torch.Generator().manual_seed(7)), cfg)
    batch = tiny_batch(dtype=torch.float32, B=8)
    first = learner.step(batch)
    for _ in range(50):
        last = learner.step(batch)
    assert last < first


@pytest.mark.parametrize("algorithm", ["fomaml", "anil", "ridge", "metasgd", "pretrain"])
def test_every_algorithm_trains_on_a_cluster(cluster_window, algorithm):
    values, mask, start_step = cluster_window
    cfg = MetaConfig(algorithm=algorithm, meta_steps=20, eval_every=10, meta_batch=8, val_tasks=32)
    model = meta_train(values, mask, start_step, FeatureSpec(24), cfg)
    assert np.isfinite(model.metrics["val_query_mse_adapted"])
    assert (model.inner_rates is not None) == (algorithm in ("metasgd", "ridge"))
    restored = MetaModel.from_state(model.state())
    if algorithm == "anil":  # only the output layer adapts, from the state as saved
        assert restored.rates == {"w3": cfg.inner_lr, "b3": cfg.inner_lr}
    if algorithm == "ridge":  # the learned penalty, as saved, and in the metrics
        assert set(restored.rates) == {"log_ridge"}
        assert model.metrics["ridge_penalty"] == pytest.approx(
            float(model.inner_rates["log_ridge"].exp())
        )
        torch.testing.assert_close(restored.rates["log_ridge"], model.inner_rates["log_ridge"])
    if algorithm == "metasgd":
        for k in model.inner_rates:
            torch.testing.assert_close(restored.inner_rates[k], model.inner_rates[k])


def test_checkpoint_with_rates_roundtrips_through_the_model_store(tmp_path):
    from tsmeta.store.models import load_latest_models, save_model
    from tsmeta.store.schema import create_engine, create_schema

    spec = FeatureSpec(168)
    params = init_params(spec.n_features, 8, torch.Generator().manual_seed(8))
    cfg = MetaConfig(algorithm="metasgd", k=24, inner_steps=3, seed=11)
    model = MetaModel(
        params, spec, cfg, TailModel(1.1, 5.0), {"val_query_mse_adapted": 0.2}, random_rates(params)
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_schema(engine)
    save_model(engine, tmp_path / "models", "p168", model, "run")
    _, loaded = load_latest_models(engine)["p168"]
    assert loaded.config == cfg and loaded.spec == spec and loaded.calibration == model.calibration
    for k in params:
        torch.testing.assert_close(loaded.params[k], params[k])
        torch.testing.assert_close(loaded.inner_rates[k], model.inner_rates[k])


def test_baselines_share_the_interface(cluster_window):
    values, mask, start_step = cluster_window
    spec = FeatureSpec(24)
    v, m = torch.as_tensor(values), torch.as_tensor(mask)
    batch = sample_tasks(v, m, 64, spec, 24, 24, start_step, torch.Generator().manual_seed(0), 24)
    naive, scratch = SeasonalNaive(spec), Scratch(spec.n_features, steps=50)
    init = Adapted(init_params(spec.n_features, 40, torch.Generator().manual_seed(0)), 0.1, 0)
    for f in (naive, scratch, init):
        s, q = f.predict(batch)
        assert s.shape == batch.ys.shape and q.shape == batch.yq.shape
    # seasonal naive is the lag one period back: on these daily-periodic series it beats
    # an untrained network, and training from scratch on K points beats not training
    assert query_mse(naive, batch) < query_mse(init, batch)
    assert query_mse(scratch, batch) < query_mse(init, batch)
    with pytest.raises(ValueError, match="seasonal-lag"):
        SeasonalNaive(FeatureSpec(24, seasonal_lag=False))


def test_the_support_spread_is_the_robust_scale_of_its_seasonal_differences():
    """TaskBatch.spread: 1.4826 x the median |y_t - y_(t - period)| over the support points
    observed at both ends, in normalised units (0 when none is)."""
    g = np.random.default_rng(3)
    values = torch.as_tensor(g.normal(10, 2, size=(3, 80)), dtype=torch.float64)
    mask = torch.ones(3, 80, dtype=torch.bool)
    mask[1, 40:50] = False  # support points and lag points missing
    mask[2, 8:56] = False  # no pair observed at both ends
    spec = FeatureSpec(24, veto_neighbours=False)  # the deviations alone (see below for both)
    b = make_batch(values, mask, torch.arange(3), torch.full((3,), 56), spec, 24, 24, 0)
    for i in range(2):
        t = torch.arange(32, 56)
        ok = mask[i, t] & mask[i, t - 24]
        d = (values[i, t] - values[i, t - 24])[ok] / b.scale[i]
        expect = 1.4826 * d.abs().sort().values[(int(ok.sum()) - 1) // 2]
        torch.testing.assert_close(b.spread[i], expect)
    assert b.spread[2] == 0
    no_lag = make_batch(values, mask, torch.arange(3), torch.full((3,), 56),
                        FeatureSpec(24, seasonal_lag=False), 24, 24, 0)  # fmt: skip
    assert no_lag.spread is None and len(b.select(torch.tensor([0, 2])).spread) == 2
    # TaskBatch.naive: each query point's deviation from the support's last same-phase
    # value, over the spread; +inf where the reference is missing or there is no spread
    q = torch.arange(56, 80)
    ref = 56 - 24 + (q - 56) % 24
    for i in range(2):
        expect = (values[i, q] - values[i, ref]) / b.scale[i] / b.spread[i]
        expect = torch.where(mask[i, ref], expect, torch.full_like(expect, float("inf")))
        torch.testing.assert_close(b.naive[i], expect)
    assert torch.isinf(b.naive[1, 40 - 32]) and torch.isinf(b.naive[2]).all()
    assert no_lag.naive is None


def test_the_veto_takes_the_nearer_of_the_day_before_and_the_week_before():
    """FeatureSpec.veto_lag: each query point's naive deviation is the smaller of its
    deviations from the support's last same-phase value (over the spread of the support's
    differences at the period) and from the value veto_lag steps back (over the spread of
    its differences at veto_lag); a missing reference leaves the other; the window must
    hold the support's second references (earliest_cut)."""
    g = np.random.default_rng(4)
    T, t0 = 224, 200
    values = torch.as_tensor(g.normal(10, 2, size=(3, T)), dtype=torch.float64)
    values[0, t0:] = values[0, t0 - 168 : t0 - 144]  # the night repeats the week before
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[2, t0 - 168 : t0 - 144] = False  # no week-before reference
    spec = FeatureSpec(24, veto_lag=168, veto_neighbours=False)  # the deviations alone
    assert earliest_cut(spec, 24) == 192 and earliest_cut(FeatureSpec(24), 24) == 48
    b = make_batch(values, mask, torch.arange(3), torch.full((3,), t0), spec, 24, 24, 0)
    day = make_batch(values, mask, torch.arange(3), torch.full((3,), t0),
                     FeatureSpec(24, veto_neighbours=False), 24, 24, 0)  # fmt: skip
    q, sup = torch.arange(t0, T), torch.arange(t0 - 24, t0)
    for i in range(3):
        d = (values[i, sup] - values[i, sup - 168]) / b.scale[i]  # the support's week diffs
        spread = 1.4826 * d.abs().sort().values[11]
        week = (values[i, q] - values[i, q - 168]) / b.scale[i] / spread
        week = torch.where(mask[i, q - 168], week, torch.full_like(week, float("inf")))
        expect = torch.where(week.abs() < day.naive[i].abs(), week, day.naive[i])
        torch.testing.assert_close(b.naive[i], expect)
    assert (b.naive[0].abs() < 1e-6).all() and not (day.naive[0].abs() < 1e-6).any()
    torch.testing.assert_close(b.naive[2], day.naive[2])  # the day before alone
    with pytest.raises(ValueError, match="veto_lag"):
        FeatureSpec(24, veto_lag=-1)
    with pytest.raises(ValueError, match="veto_lag"):
        FeatureSpec(24, seasonal_lag=False, veto_lag=168)


def test_the_veto_measures_each_deviation_against_its_neighbours():
    """FeatureSpec.veto_neighbours: a point repeats its reference only when its neighbours
    repeat theirs the same way. A day that repeats the day before stays explained; a spike
    that lands on the day before's value after the day moved away from it is not; the
    deviation is the larger of the point's own and its own minus its neighbours' median
    (a loop over the points); models saved before it load without it."""
    g = np.random.default_rng(5)
    T, t0 = 96, 72
    values = torch.as_tensor(g.normal(10, 1, size=(3, T)), dtype=torch.float64)
    values[0, t0:] = values[0, t0 - 24 : t0]  # the night repeats the day before
    values[1, t0:] = values[1, t0 - 24 : t0] - 8.0  # the day moved 8 down ...
    values[1, t0 + 10] += 8.0  # ... and one point is back at the day before's value
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[2, t0 + 3] = False
    rows, cut = torch.arange(3), torch.full((3,), t0)
    own = make_batch(values, mask, rows, cut, FeatureSpec(24, veto_neighbours=False), 24, 24, 0)
    b = make_batch(values, mask, rows, cut, FeatureSpec(24), 24, 24, 0)
    assert (b.naive[0].abs() < 1e-9).all()  # a repeated day stays explained
    assert own.naive[1, 10].abs() < 1e-9  # by its own deviation the spike repeats ...
    assert b.naive[1, 10] > 0.5 * own.naive[1, 9].abs()  # ... against its neighbours it does not
    d, mq = own.naive.numpy(), own.mq.numpy() > 0
    # the local part in the series' own jumps: sqrt 2 jumps over the veto's scale
    ratio = (b.spread / (b.jump * math.sqrt(2.0) / NAIVE_VETO_SCALE)).numpy()
    for i in range(3):
        for t in range(24):
            around = [d[i, u] for u in (t - 2, t - 1, t + 1, t + 2)
                      if 0 <= u < 24 and mq[i, u] and np.isfinite(d[i, u])]  # fmt: skip
            if not around:
                want = d[i, t]
            else:
                s = np.sort(around)
                local = (d[i, t] - s[(len(s) - 1) // 2]) * ratio[i]  # the lower middle
                want = local if abs(local) > abs(d[i, t]) else d[i, t]
            assert b.naive[i, t].item() == pytest.approx(want, abs=1e-9)
    from tsmeta.scoring import TailModel

    model = MetaModel(init_params(8, 4), FeatureSpec(24), MetaConfig(), TailModel(1.0, 5.0))
    state = model.state()
    assert MetaModel.from_state(state).spec.veto_neighbours
    state["spec"].pop("veto_neighbours")
    assert not MetaModel.from_state(state).spec.veto_neighbours


def test_the_veto_measures_a_point_against_its_neighbours_in_the_series_own_jumps():
    """FeatureSpec.veto_jumps: in a series whose days differ by a level offset (up to 40
    noise sds from one day to the next), a dip of 8 noise sds is 2 spreads of its support's
    differences from the day before, but further in the series' own jumps: the veto
    explains it less. A day that repeats the day before stays explained. Models saved
    before it load without it."""
    g = np.random.default_rng(1)
    T, t0 = 24 * 7, 24 * 6
    offset = np.repeat(np.array([0.0, 25, -5, 30, 0, 20, -20]), 24)
    season = 10 * np.sin(2 * np.pi * np.arange(T) / 24)
    values = torch.as_tensor(100 + offset + season + g.normal(0, 1.0, (3, T)), dtype=torch.float64)
    values[1, t0 + 10] -= 8.0  # the dip
    values[2, t0:] = values[2, t0 - 24 : t0]  # the night repeats the day before
    mask = torch.ones(3, T, dtype=torch.bool)
    rows, cut = torch.arange(3), torch.full((3,), t0)
    old = make_batch(values, mask, rows, cut, FeatureSpec(24, veto_jumps=False), 24, 24, 0)
    b = make_batch(values, mask, rows, cut, FeatureSpec(24), 24, 24, 0)
    assert (b.naive[2].abs() < 1e-9).all()  # a repeated day stays explained
    assert old.naive[1, 10].abs() < 2.0 < b.naive[1, 10].abs()
    assert b.naive[1, 10].abs() > 1.5 * old.naive[1, 10].abs()
    assert b.jump[1] * 10 < b.spread[1]  # the series' jumps are a tenth of its days' moves
    model = MetaModel(init_params(8, 4), FeatureSpec(24), MetaConfig(), TailModel(1.0, 5.0))
    state = model.state()
    assert MetaModel.from_state(state).spec.veto_jumps
    state["spec"].pop("veto_jumps")
    assert not MetaModel.from_state(state).spec.veto_jumps


def test_hourly_daily_period_models_get_the_week_as_the_vetos_second_reference():
    from tsmeta.config import Settings
    from tsmeta.jobs.train import _spec_for

    hourly, daily = Settings(freq="h"), Settings(freq="d")
    assert _spec_for(hourly, "p24-0").veto_lag == 168
    assert _spec_for(hourly, "p0-0").veto_lag == 168  # aperiodic: the natural day
    assert _spec_for(hourly, "p168-0").veto_lag == 0  # its seasonal lag is the week
    assert _spec_for(daily, "p7-0").veto_lag == 0 and _spec_for(daily, "p0-0").veto_lag == 0
    # the forecaster reads the same week (FeatureSpec.second_lag), unless turned off
    assert _spec_for(hourly, "p24-0").second_lag == 168
    assert _spec_for(hourly, "p168-0").second_lag == 0
    assert _spec_for(daily, "p7-0").second_lag == 0
    assert _spec_for(Settings(freq="h", week_lag_input=False), "p24-0").second_lag == 0


@pytest.mark.parametrize("same", [False, True])
@pytest.mark.parametrize(("periods", "spare"), [(1, 0), (2, 0), (3, 0), (4, 0), (3, 1), (3, 2)])
def test_lagged_median_matches_a_per_point_loop(periods, spare, same):
    """The lagged input over several periods: the median of the observed same-phase points
    (a plain loop per point as the oracle), cut-aware like the single lag; with spare
    periods, of the ``periods`` most recent observed ones among ``periods + spare``; the
    same whether one row of columns stands for every row (taken as slices) or each row has
    its own (gathered)."""
    from tsmeta.forecaster import lagged

    rng = np.random.default_rng(periods)
    B, T, lag = 5, 120, 24
    v = torch.tensor(rng.normal(size=(B, T)), dtype=torch.float32)
    obs = torch.tensor(rng.random((B, T)) > 0.2)
    cols = torch.tensor(rng.integers(0, T, size=(B, 30)))
    cut = torch.tensor(rng.integers(30, 90, size=B))
    calls = [(cols, cut)]
    if same:  # one row of columns and cuts for every row (a night's batch): taken by one
        # index, or as slices where the lags are a run inside the window
        run = int(cut[0]) + torch.arange(20)  # first lags cut - 24 .. cut - 5: inside
        calls = [(cols[:1], cut[:1]), (run[None], cut[:1])]
    for cols_in, cut_in in calls:
        val, ok = lagged(lag, v, obs, cols_in, cut_in, periods, spare)
        for b in range(B):
            row = 0 if len(cols_in) == 1 else b
            for j, c in enumerate(cols_in[row].tolist()):
                back = 1 + max(c - int(cut_in[row]), 0) // lag
                seen = [float(v[b, c - lag * (back + e)]) for e in range(periods + spare)
                        if c - lag * (back + e) >= 0 and obs[b, c - lag * (back + e)]][:periods]  # fmt: skip
                assert bool(ok[b, j]) == bool(seen)
                expect = float(np.median(seen)) if seen else 0.0
                assert float(val[b, j]) == pytest.approx(expect, abs=1e-6)


def test_a_tasks_jump_unit_is_its_series_own_contrast_over_the_days_before_the_cut():
    """``TaskBatch.jump``: 1.4826 * median |c_t - c_(t-period)| / sqrt(2), c a point's local
    contrast v_t - mean(v_(t-1), v_(t+1)), over the 120 steps before the cut (K = 24) where
    all six points are observed, in normalised units; a season's shape differences away;
    a night's batch (every row cut at one step, column slices) and a training batch (cuts
    per row, gathers) give the same; nothing after the cut is read."""
    from tsmeta.meta.tasks import JUMP_SPAN

    rng = np.random.default_rng(15)
    sd = np.array([[1.0], [5.0], [2.0]])
    season = 20.0 * (np.arange(400) % 2)[None, :]  # a daily shape that zigzags every hour
    values = torch.as_tensor(rng.normal(size=(3, 400)) * sd + season)
    flat = torch.as_tensor(rng.normal(size=(3, 400)) * sd)  # the same noise's, no season
    mask = torch.as_tensor(rng.random((3, 400)) > 0.1)
    spec = FeatureSpec(24)
    night = make_batch(values, mask, torch.arange(3), torch.full((3,), 300), spec, 24, 24, 0)
    train = make_batch(values, mask, torch.tensor([0, 1, 2, 1]), torch.tensor([300, 300, 300, 250]),
                       spec, 24, 24, 0)  # fmt: skip
    torch.testing.assert_close(night.jump, train.jump[:3])
    w = JUMP_SPAN * 24 + 24
    for i in range(3):
        v = ((values[i, 300 - w : 300] - night.loc[i]) / night.scale[i]).numpy()
        m = mask[i, 300 - w : 300].numpy()
        c, ok = v[1:-1] - 0.5 * (v[:-2] + v[2:]), m[1:-1] & m[:-2] & m[2:]
        d = ((c[24:] - c[:-24]) / np.sqrt(2.0))[ok[24:] & ok[:-24]]
        a = np.sort(np.abs(d))
        assert float(night.jump[i]) == pytest.approx(1.4826 * a[(len(a) - 1) // 2], rel=1e-6)
    alone = make_batch(flat, mask, torch.arange(3), torch.full((3,), 300), spec, 24, 24, 0)
    ratio = (night.jump * night.scale) / (alone.jump * alone.scale)  # the season adds no jump
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), ratio
    later = values.clone()
    later[:, 300:] = 1e6
    torch.testing.assert_close(make_batch(later, mask, torch.arange(3), torch.full((3,), 300),
                                          spec, 24, 24, 0).jump, night.jump)  # fmt: skip
