import numpy as np
import pytest

from tsmeta.data.panel import build_panel
from tsmeta.data.synthetic import generate_frame
from tsmeta.detect import score_day
from tsmeta.forecaster import FeatureSpec
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


def test_batched_scoring_equals_per_series_loop(trained):
    values, mask, ids, start, model = trained
    batched = score_day(values[:20], mask[:20], ids[:20], start, model, 1e-3, chunk_series=7)
    for i in range(20):
        one = score_day(values[i : i + 1], mask[i : i + 1], ids[i : i + 1], start, model, 1e-3)
        np.testing.assert_allclose(
            batched.forecast[i], one.forecast[0], rtol=1e-4, atol=1e-4 * abs(one.forecast[0]).max()
        )
        np.testing.assert_array_equal(batched.flag[i], one.flag[0])


def test_clean_data_flag_rate_near_false_alarm_rate(trained):
    values, mask, ids, start, model = trained
    day = score_day(values, mask, ids, start, model, 1e-3)
    rate = day.flag.sum() / day.observed.sum()
    assert rate < 0.01
    assert np.all((day.score[day.observed] >= 0) & (day.score[day.observed] <= 1))
    inside = (day.value >= day.lower) & (day.value <= day.upper)
    assert inside[day.observed].mean() > 0.97
    # flagged points are exactly those outside the band
    np.testing.assert_array_equal(day.flag[day.observed], ~inside[day.observed])


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
    m[0, T - 48 : T - 24] = False  # the whole support day missing
    v[0, T - 48 : T - 24] = np.nan
    m[1] = False  # nothing observed at all
    v[1] = np.nan
    day = score_day(v, m, ids[:3], start, model, 1e-3)
    assert list(day.scored) == [False, False, True]
    assert not day.flag[:2].any() and np.isnan(day.score[:2]).all()


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
