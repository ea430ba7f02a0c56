import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tsmeta.data.panel import build_panel
from tsmeta.data.synthetic import generate_frame
from tsmeta.detect import BASIS, SEVERITY, score_day, severity_of
from tsmeta.forecaster import FeatureSpec
from tsmeta.meta.baselines import Adapted
from tsmeta.meta.tasks import make_batch
from tsmeta.meta.train import MetaConfig, meta_train


@pytest.fixture(scope="module")
def trained():
    """A daily-period cluster: 27 days to train on, the 28th day scored."""
    f, _, meta = generate_frame(600, "h", 28, seed=9, anomaly_rate=0.0)
    p = build_panel(f, "h")
    rows = meta.sort("series_id")["period"].to_numpy() == 24
    values, mask, ids = p.values[rows], p.mask[rows], p.series_ids[rows]
    cfg = MetaConfig(meta_steps=150, eval_every=50, val_tasks=256)
    model = meta_train(values[:, : 27 * 24], mask[:, : 27 * 24], p.start_step, FeatureSpec(24), cfg)
    # the scoring window: the 9 days before and the scored day
    first = 19 * 24
    return values[:, first:], mask[:, first:], ids, p.start_step + first, model


@pytest.fixture(scope="module")
def shared_feature_model():
    """``shared_feature_model(algorithm)``: the fixture's cluster trained with ``algorithm``
    (one training per algorithm and module)."""
    cache = {}

    def train(algorithm):
        if algorithm not in cache:
            cfg = MetaConfig(meta_steps=150, eval_every=50, val_tasks=256, algorithm=algorithm)
            f, _, meta = generate_frame(600, "h", 28, seed=9, anomaly_rate=0.0)
            p = build_panel(f, "h")
            rows = meta.sort("series_id")["period"].to_numpy() == 24
            cache[algorithm] = meta_train(p.values[rows][:, : 27 * 24], p.mask[rows][:, : 27 * 24],
                                          p.start_step, FeatureSpec(24), cfg)  # fmt: skip
        return cache[algorithm]

    return train


def test_batched_scoring_equals_per_series_loop(trained):
    values, mask, ids, start, model = trained
    batched = score_day(values[:20], mask[:20], ids[:20], start, model, 1e-3, chunk_series=7)
    for i in range(20):
        one = score_day(values[i : i + 1], mask[i : i + 1], ids[i : i + 1], start, model, 1e-3)
        np.testing.assert_allclose(
            batched.forecast[i], one.forecast[0], rtol=1e-4, atol=1e-4 * abs(one.forecast[0]).max()
        )
        np.testing.assert_array_equal(batched.flag[i], one.flag[0])


def test_a_longer_window_than_the_model_reads_scores_the_same(trained):
    """A night's window is as long as its longest-reaching model needs (a weekly lag reads
    a week): the columns before what this model reads change nothing."""
    from tsmeta.meta.tasks import window_reach

    values, mask, ids, start, model = trained
    # K, the seasonal lag, the series' own jumps (4 supports and a period) and the scored day
    need = window_reach(model.spec, model.config.k, model.config.horizon) + model.config.horizon
    assert need == 24 * 4 + 24 + 24
    values, mask, start = values[:50, 5:], mask[:50, 5:], start + 5  # not whole days long
    long = score_day(values, mask, ids[:50], start, model, 1e-3)
    cut = values.shape[1] - need
    short = score_day(values[:, cut:], mask[:, cut:], ids[:50], start + cut, model, 1e-3)
    assert cut % 24 and list(long.cols) == list(short.cols + cut)
    for name in ("forecast", "lower", "upper", "residual", "tail"):
        np.testing.assert_array_equal(getattr(long, name), getattr(short, name))
    np.testing.assert_array_equal(long.flag, short.flag)
    np.testing.assert_array_equal(long.basis, short.basis)


def test_the_lagged_inputs_median_reads_the_periods_before_and_resists_one_unusual_one(trained):
    """FeatureSpec.lag_periods = 3: the inputs are the median of the same phase over three
    periods (and a spare one for a period not observed), so scoring reads them (a change three periods back moves the forecast, and a
    longer window than that reads changes nothing), and one period at 0.6x of its level (a
    holiday) moves the forecast less than it moves the single most recent lag's."""
    values, mask, ids, start, base = trained
    med = replace(base, spec=replace(base.spec, lag_periods=3))
    values, mask, ids = values[:60].copy(), mask[:60], ids[:60]
    t0 = values.shape[1] - 24

    def forecast(model, v):
        return score_day(v, mask, ids, start, model, 1e-3).forecast

    older = values.copy()
    older[:, t0 - 72 : t0 - 48] *= 1.5  # three days back: the support's second lag
    assert np.array_equal(forecast(base, older), forecast(base, values))  # one lag: not read
    assert not np.allclose(forecast(med, older), forecast(med, values))
    need = 24 + 4 * 24 + 24  # K, three periods of lags and a spare, the scored day
    cut = values.shape[1] - need
    short = score_day(values[:, cut:], mask[:, cut:], ids, start + cut, med, 1e-3)
    np.testing.assert_array_equal(short.forecast, forecast(med, values))

    holiday = values.copy()
    holiday[:, t0 - 48 : t0 - 24] *= 0.6  # the day before the support: the support's lag
    moved = {name: np.nanmedian(np.abs(forecast(m, holiday) / forecast(m, values) - 1))
             for name, m in (("one", base), ("median", med))}  # fmt: skip
    assert moved["median"] < moved["one"], moved

    # FeatureSpec.lag_spare: a fourth period back is read only where one of the three is
    # not observed (a shared event, a holiday), so the median still has three points
    def fc(model, v, m):  # noqa: ANN001, ANN202
        return score_day(np.where(m, v, np.nan), m, ids, start, model, 1e-3).forecast

    fourth = values.copy()
    fourth[:, t0 - 120 : t0 - 96] *= 1.5  # the support's fourth lag (none of the night's)
    full = np.ones_like(mask)
    assert np.array_equal(fc(med, fourth, full), fc(med, values, full))
    gap = full.copy()
    gap[:, t0 - 48 : t0 - 24] = False  # the support's first lag (the night's second)
    assert not np.allclose(fc(med, fourth, gap), fc(med, values, gap))
    none = replace(med, spec=replace(med.spec, lag_spare=0))
    assert np.array_equal(fc(none, fourth, gap), fc(none, values, gap))


def _without_veto(model):  # noqa: ANN001, ANN202
    part = model.partial_calibration
    return replace(model, calibration=replace(model.calibration, veto=None),
                   partial_calibration=part and replace(part, veto=None))  # fmt: skip


def test_clean_data_flag_rate_near_false_alarm_rate(trained):
    values, mask, ids, start, model = trained
    day = score_day(values, mask, ids, start, model, 1e-3)
    rate = day.flag.sum() / day.observed.sum()
    assert rate < 0.01
    assert np.all((day.score[day.observed] >= 0) & (day.score[day.observed] <= 1))
    inside = (day.value >= day.lower) & (day.value <= day.upper)
    assert inside[day.observed].mean() > 0.97
    # without the veto, every point outside the band is flagged; a flagged point inside it
    # belongs to a sustained deviation (its window statistic): judged alone, the flags are
    # the band's
    assert model.calibration.veto is not None
    day = score_day(values, mask, ids, start, _without_veto(model), 1e-3)
    inside = (day.value >= day.lower) & (day.value <= day.upper)
    assert day.flag[day.observed & ~inside].all()
    alone = replace(model, calibration=model.calibration.point,
                    partial_calibration=model.partial_calibration and model.partial_calibration.point)  # fmt: skip
    pts = score_day(values, mask, ids, start, alone, 1e-3)
    inside = (pts.value >= pts.lower) & (pts.value <= pts.upper)
    np.testing.assert_array_equal(pts.flag[pts.observed], ~inside[pts.observed])
    assert model.calibration.windows is not None


def test_injected_spike_and_dip_are_flagged_with_direction(trained):
    values, mask, ids, start, model = trained
    v = values.copy()
    clean = score_day(values, mask, ids, start, model, 1e-3)
    T = v.shape[1]
    half_width = (clean.upper - clean.lower)[:, 10] / 2
    v[:50, T - 14] = clean.forecast[:50, 10] + 4 * half_width[:50]
    v[50:100, T - 14] = clean.forecast[50:100, 10] - 4 * half_width[50:100]
    m = mask.copy()
    m[:100, T - 14] = True
    day = score_day(v, m, ids, start, model, 1e-3)
    assert day.flag[:100, 10].all()
    assert (day.residual[:50, 10] > 0).all() and (day.residual[50:100, 10] < 0).all()


def test_series_with_too_few_support_points_are_reported_unscored(trained):
    values, mask, ids, start, model = trained
    v, m = values[:3].copy(), mask[:3].copy()
    T = v.shape[1]
    m[0, T - 72 : T - 24] = False  # the whole support day missing, and the day before it
    v[0, T - 72 : T - 24] = np.nan
    m[1] = False  # nothing observed at all
    v[1] = np.nan
    day = score_day(v, m, ids[:3], start, model, 1e-3)
    assert list(day.scored) == [False, False, True]
    assert not day.flag[:2].any() and np.isnan(day.score[:2]).all()
    assert [BASIS[b] for b in day.basis] == ["unscored", "unscored", "adapted"]
    assert day.basis_counts() == {
        "adapted": 1, "partial": 0, "fallback": 0, "unscored": 2, "constant": 0
    }  # fmt: skip
    # the support day alone missing: the series adapts from the day before it instead
    m[0, T - 72 : T - 48], v[0, T - 72 : T - 48] = (
        mask[0, T - 72 : T - 48],
        values[0, T - 72 : T - 48],
    )
    day = score_day(v, m, ids[:3], start, model, 1e-3)
    assert list(day.scored) == [True, False, True] and BASIS[day.basis[0]] == "adapted"
    assert day.support_points[0] == m[0, T - 72 : T - 48].sum()


def test_cold_start_adapts_from_the_points_it_has_and_says_so(trained):
    values, mask, ids, start, model = trained
    v, m = values[:2].copy(), mask[:2].copy()
    T = v.shape[1]
    # a series born 6 hours before the scored day: only 6 of its K=24 support points exist
    m[0, : T - 30] = False
    v[0, : T - 30] = np.nan
    day = score_day(v, m, ids[:2], start, model, 1e-3)
    assert list(day.support_points) == [6, 24]
    assert [BASIS[b] for b in day.basis] == ["partial", "adapted"]
    assert day.scored.all() and np.isfinite(day.forecast[0]).all()
    assert np.isfinite(day.score[0][day.observed[0]]).all()


def test_diverging_adaptation_falls_back_to_the_base_forecast(trained):
    import dataclasses

    values, mask, ids, start, model = trained
    wild = dataclasses.replace(model, config=dataclasses.replace(model.config, inner_lr=50.0))
    day = score_day(values[:30], mask[:30], ids[:30], start, wild, 1e-3)
    fell = day.basis == BASIS.index("fallback")
    assert fell.any()  # a step size of 50 blows the fit up
    assert np.isfinite(day.forecast[fell]).all()
    # the fallback forecasts the support mean (level targets): finite, and flags stay rare
    assert day.flag[fell].mean() < 0.2


def test_the_ridge_head_falls_back_only_where_its_fit_failed(trained, shared_feature_model):
    """Leave-one-out support residuals often fit worse than the support's in-sample mean;
    that alone keeps the ridge forecast (it cannot diverge). A fit that failed (NaN)
    forecasts the support mean instead, finite, and says so."""
    values, mask, ids, start, _ = trained
    ridge = shared_feature_model("ridge")
    v = values[:30].copy()
    v[0] = 42.0 + 1e-3 * np.arange(v.shape[1]) % 2  # a series that barely varies
    day = score_day(v, mask[:30], ids[:30], start, ridge, 1e-3)
    cfg = ridge.config
    r = torch.arange(30)
    batch = make_batch(torch.as_tensor(v), torch.as_tensor(mask[:30]), r,
                       torch.full_like(r, v.shape[1] - cfg.horizon), ridge.spec, cfg.k,
                       cfg.horizon, start)  # fmt: skip
    ps, _ = Adapted.from_model(ridge).predict(batch)
    loo = ((ps - batch.ys) ** 2 * batch.ms).sum(1)
    assert (loo > (batch.ys**2 * batch.ms).sum(1)).any()  # worse than the mean, in sample
    assert not (day.basis == BASIS.index("fallback")).any()
    broken = replace(
        ridge, params={**ridge.params, "b3": torch.full_like(ridge.params["b3"], float("nan"))}
    )
    bad = score_day(v, mask[:30], ids[:30], start, broken, 1e-3)
    assert (bad.basis == BASIS.index("fallback")).all()
    assert np.isfinite(bad.forecast).all()
    support = np.where(mask[:30, -48:-24], v[:, -48:-24], np.nan)
    np.testing.assert_allclose(bad.forecast[:, 0], np.nanmean(support, 1), rtol=1e-4)


def test_scores_keep_strong_anomalies_apart_and_severity_grades_them(trained):
    values, mask, ids, start, model = trained
    v = values[:3].copy()
    T = v.shape[1]
    clean = score_day(values[:3], mask[:3], ids[:3], start, model, 1e-3)
    half = (clean.upper - clean.lower)[:, 5] / 2
    for i, k in enumerate((30, 60, 120)):
        v[i, T - 19] = clean.forecast[i, 5] + k * half[i]
    day = score_day(v, mask[:3], ids[:3], start, model, 1e-3)
    tails = day.tail[:, 5]
    assert (tails < 1e-3).all() and len(set(tails)) == 3 and tails[0] > tails[1] > tails[2]
    assert day.score.dtype == np.float64 and (day.score[:, 5] <= 1.0).all()
    sev = severity_of(np.array([5e-4, 5e-5, 5e-6, 1e-300]), 1e-3)
    assert [SEVERITY[s] for s in sev] == ["minor", "major", "critical", "critical"]


def test_constant_series_does_not_explode(trained):
    values, mask, ids, start, model = trained
    v = np.full((1, values.shape[1]), 42.0, dtype=np.float32)
    day = score_day(v, np.ones_like(v, dtype=bool), ids[:1], start, model, 1e-3)
    assert np.isfinite(day.forecast).all() and not day.flag.any()


def test_bad_arguments(trained):
    values, mask, ids, start, model = trained
    with pytest.raises(ValueError, match="too short"):
        score_day(values[:, -30:], mask[:, -30:], ids, start, model, 1e-3)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        score_day(values, mask, ids, start, model, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU worker)")
@pytest.mark.parametrize("algorithm", ["maml", "anil", "ridge"])
def test_scoring_on_cuda_equals_the_cpu(trained, shared_feature_model, algorithm):
    values, mask, ids, start, model = trained
    if algorithm != "maml":
        model = shared_feature_model(algorithm)
    # a cold-start series and a gap, so every basis path runs on the device too
    mask = mask.copy()
    mask[0, : mask.shape[1] - 30] = False
    mask[1, -30:-27] = False
    cpu = score_day(values, mask, ids, start, model, 1e-3, chunk_series=64)
    gpu = score_day(values, mask, ids, start, model, 1e-3, chunk_series=64, device="cuda")
    scale = np.nanmax(np.abs(cpu.forecast))
    np.testing.assert_allclose(gpu.forecast, cpu.forecast, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(gpu.upper, cpu.upper, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_array_equal(gpu.basis, cpu.basis)
    np.testing.assert_array_equal(gpu.support_points, cpu.support_points)
    # flags may differ only where a tail sits on the threshold within float32 rounding
    assert (gpu.flag != cpu.flag).sum() <= 2


def test_asking_for_cuda_without_a_gpu_names_the_fix(monkeypatch):
    from tsmeta.config import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="TSMETA_DEVICE=auto"):
        Settings(device="cuda").torch_device()
    assert Settings(device="auto").torch_device() == "cpu"


def test_series_with_fewer_support_points_use_the_partial_tail(trained):
    from dataclasses import replace

    from tsmeta.meta.train import MetaModel
    from tsmeta.scoring import TailModel

    values, mask, ids, start, model = trained
    assert model.partial_calibration is not None  # fitted at training (tasks with gaps)
    again = MetaModel.from_state(model.state())
    assert again.partial_calibration == model.partial_calibration
    mask = mask.copy()
    mask[0, -24 - 10 : -24] = False  # 14 of 24 support points: basis partial
    wide = replace(model, partial_calibration=TailModel(model.calibration.scale * 10, math.inf))
    narrow = replace(model, partial_calibration=None)  # older models: the full-support tail
    a = score_day(values[:3], mask[:3], ids[:3], start, wide, 1e-3)
    b = score_day(values[:3], mask[:3], ids[:3], start, narrow, 1e-3)
    assert BASIS[a.basis[0]] == "partial" and BASIS[a.basis[1]] == "adapted"
    np.testing.assert_allclose(a.forecast, b.forecast)
    assert ((a.upper - a.lower)[0] > 3 * (b.upper - b.lower)[0]).all()  # partial: its own tail
    np.testing.assert_allclose((a.upper - a.lower)[1:], (b.upper - b.lower)[1:])  # full: unchanged


def test_a_constant_support_after_a_varying_period_is_not_scored(trained):
    """A stuck sensor: the night after a flatline must not be flagged throughout."""
    values, mask, ids, start, model = trained
    v = values[:3].copy()
    v[0, -48:-26] = v[0, -49]  # 22 of the 24 support points stuck at one value
    v[1, :] = 42.0  # constant throughout: scored as usual
    v[1, -5] = 80.0  # ... and its spike is flagged
    day = score_day(v, mask[:3], ids[:3], start, model, 1e-3)
    # (a constant series' forecast is its mean: adaptation gains nothing, basis fallback)
    assert [BASIS[b] for b in day.basis] == ["constant", "fallback", "adapted"]
    assert not day.flag[0].any() and np.isnan(day.tail[0]).all() and not day.scored[0]
    assert day.flag[1, -5] and day.flag[1].sum() == 1
    assert day.basis_counts()["constant"] == 1


@pytest.mark.parametrize("algorithm", ["anil", "ridge"])
def test_a_shared_feature_model_scores_a_night_like_its_reference(
    trained, shared_feature_model, algorithm
):
    """ANIL (the inner loop on the output layer only) and the ridge head (the output layer
    solved in closed form; support residuals leave-one-out, since 41 parameters fitted to 24
    points leave almost none in sample) through the whole scoring step: the forecasts equal
    the vmap reference's, and clean data stays near the rate. (The reference adapts
    every support point, so the ridge head is compared untrimmed here; its refit without
    support outliers is checked against refits in test_ridge.)"""
    from tsmeta.meta.maml import adapt_batch, predict_batch
    from tsmeta.meta.tasks import earliest_cut, make_batch

    values, mask, ids, start, model = trained
    shared = shared_feature_model(algorithm)
    cfg = shared.config
    if algorithm == "anil":
        assert shared.rates == {"w3": cfg.inner_lr, "b3": cfg.inner_lr}
    else:
        assert set(shared.rates) == {"log_ridge"}
    day = score_day(values, mask, ids, start, shared, 1e-3)
    assert day.flag.sum() / day.observed.sum() < 0.01
    if algorithm == "ridge":  # the reference adapts on every support point
        shared = replace(shared, config=replace(cfg, trim=None))
        day = score_day(values, mask, ids, start, shared, 1e-3)
    T = values.shape[1]
    t0 = T - cfg.horizon
    assert t0 >= earliest_cut(shared.spec, cfg.k)
    v, m = torch.as_tensor(values), torch.as_tensor(mask)
    r = torch.arange(20)
    batch = make_batch(v, m, r, torch.full_like(r, t0), shared.spec, cfg.k, cfg.horizon, start)
    fast = adapt_batch(shared.params, batch, cfg.inner_steps, shared.rates)
    ref = batch.forecast(predict_batch(fast, batch.xq)).numpy()
    ok = day.basis[:20] == BASIS.index("adapted")
    assert ok.sum() >= 15
    np.testing.assert_allclose(day.forecast[:20][ok], ref[ok], rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())  # fmt: skip


def test_the_band_widens_by_the_factor_of_the_nights_weekday(trained):
    """A model with a weekday scale (``MetaConfig.steps_per_day``) divides z by the factor
    of the scored night's weekday: the band's half-width is that factor times the model's
    without it, on that weekday only."""
    from tsmeta.scoring import weekday_of

    values, mask, ids, start, model = trained
    night = weekday_of(start + values.shape[1] - 24, 24)
    factors = tuple(2.0 if d == night else 1.0 for d in range(7))
    tails = {k: replace(getattr(model, k), weekday_scale=factors)
             for k in ("calibration", "partial_calibration") if getattr(model, k) is not None}  # fmt: skip
    dated = replace(model, config=replace(model.config, steps_per_day=24), **tails)
    base = score_day(values[:30], mask[:30], ids[:30], start, model, 1e-3)
    wide = score_day(values[:30], mask[:30], ids[:30], start, dated, 1e-3)
    np.testing.assert_allclose(wide.upper - wide.forecast, 2 * (base.upper - base.forecast),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    other = replace(dated, **{k: replace(t, weekday_scale=factors[1:] + factors[:1]) for k, t in tails.items()})  # fmt: skip
    same = score_day(values[:30], mask[:30], ids[:30], start, other, 1e-3)
    np.testing.assert_allclose(same.upper, base.upper, rtol=1e-5)  # its weekday's factor is 1


def test_causal_scores_read_no_later_point(trained):
    """NAB's rule: a point's score is the same whatever comes after it in the night."""
    values, mask, ids, start, model = trained
    T, H = values.shape[1], model.config.horizon
    j = 9  # the night's 10th point
    later = values.copy()
    rng = np.random.default_rng(0)
    # the points after it: a level shift on some series, noise and a spike on others
    later[:, T - H + j + 1 :] += (
        rng.normal(0, 3, size=(len(values), H - j - 1)) * values.std(1)[:, None]
    )
    later[::2, T - H + j + 1] += 20 * values[::2].std(1)
    kept = np.s_[:, : j + 1]
    causal = [score_day(v, mask, ids, start, model, 1e-3, causal=True) for v in (values, later)]
    np.testing.assert_array_equal(causal[0].tail[kept], causal[1].tail[kept])
    np.testing.assert_array_equal(causal[0].flag[kept], causal[1].flag[kept])
    whole = [score_day(v, mask, ids, start, model, 1e-3) for v in (values, later)]
    assert not np.array_equal(whole[0].tail[kept], whole[1].tail[kept])  # the default reads ahead
    # causal scoring stays calibrated and still catches a spike
    assert causal[0].flag.sum() / causal[0].observed.sum() < 0.01
    v = values.copy()
    v[:50, T - 14] = (
        causal[0].forecast[:50, H - 14] + 4 * (causal[0].upper - causal[0].lower)[:50, H - 14]
    )
    m = mask.copy()
    m[:50, T - 14] = True
    assert score_day(v, m, ids, start, model, 1e-3, causal=True).flag[:50, H - 14].all()
