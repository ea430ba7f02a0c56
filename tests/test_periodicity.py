import numpy as np
import pytest

from tsmeta.clustering import period_of_cluster
from tsmeta.periodicity import APERIODIC, autocorrelation, detect_periods


def seasonal(n, T, period, noise, rng, phase_shift=True):
    t = np.arange(T)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1)) if phase_shift else 0
    x = np.sin(2 * np.pi * t / period + phase) + 0.5 * np.sin(4 * np.pi * t / period + phase)
    return (x + noise * rng.normal(size=(n, T))).astype(np.float32)


@pytest.mark.parametrize("period,noise", [(24, 0.1), (24, 0.5), (168, 0.2), (7, 0.2)])
def test_known_period_recovered(period, noise):
    rng = np.random.default_rng(0)
    T = 336 if period != 7 else 70
    x = seasonal(200, T, period, noise, rng)
    res = detect_periods(x, np.ones_like(x, dtype=bool), (7, 24, 168) if period != 7 else (7,))
    assert (res.period == period).mean() >= 0.98


def test_white_noise_is_aperiodic():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 336)).astype(np.float32)
    res = detect_periods(x, np.ones_like(x, dtype=bool))
    assert (res.period == APERIODIC).mean() >= 0.95


def test_weekly_pattern_beats_its_daily_harmonic():
    rng = np.random.default_rng(2)
    t = np.arange(336)
    daily = np.sin(2 * np.pi * t / 24)
    weekend = ((t // 24) % 7 >= 5).astype(float)
    x = (daily * (1 - 0.8 * weekend) + 0.1 * rng.normal(size=(100, 336))).astype(np.float32)
    res = detect_periods(x, np.ones_like(x, dtype=bool))
    assert (res.period == 168).mean() >= 0.95


def test_missing_points_handled_through_mask():
    rng = np.random.default_rng(3)
    x = seasonal(200, 336, 24, 0.2, rng)
    mask = rng.random(x.shape) > 0.2  # 20% missing
    x_missing = np.where(mask, x, np.nan)
    res = detect_periods(x_missing, mask)
    assert (res.period == 24).mean() >= 0.98
    # the ACF at the period is not shrunk by the gaps
    full = detect_periods(x, np.ones_like(mask))
    assert abs(np.median(res.strength) - np.median(full.strength)) < 0.05


def test_constant_all_missing_and_short_series():
    T = 336
    values = np.stack([np.full(T, 5.0), np.full(T, np.nan), np.arange(T, dtype=float)]).astype(
        np.float32
    )
    mask = np.stack([np.ones(T, bool), np.zeros(T, bool), np.ones(T, bool)])
    res = detect_periods(values, mask)
    assert list(res.period) == [APERIODIC, APERIODIC, APERIODIC]
    assert np.all(np.isfinite(res.strength))
    short = detect_periods(values[:, :30], mask[:, :30])  # shorter than the candidates
    assert (short.period == APERIODIC).all()


def test_acf_matches_pearson_over_observed_pairs():
    """Oracle: a loop computing np.corrcoef over the observed pairs of each lag."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 50)) + np.arange(50) * 0.05
    mask = rng.random(x.shape) > 0.15
    acf, pairs = autocorrelation(np.where(mask, x, np.nan), mask, 6)
    t = np.arange(50)
    for i in range(3):
        o = mask[i]
        resid = x[i] - np.polyval(np.polyfit(t[o], x[i][o], 1), t)
        for lag in range(1, 7):
            both = o[: 50 - lag] & o[lag:]
            direct = np.corrcoef(resid[: 50 - lag][both], resid[lag:][both])[0, 1]
            assert acf[i, lag] == pytest.approx(direct, abs=1e-9)
            assert pairs[i, lag] == both.sum()


def test_bad_arguments():
    with pytest.raises(ValueError, match="equal 2-D"):
        detect_periods(np.zeros((2, 3)), np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match=">= 2"):
        detect_periods(np.zeros((2, 30)), np.ones((2, 30), bool), candidates=[1])


def test_cluster_ids():
    ids = ["p24-0", "aperiodic-3", "p168-12", "p24"]  # the last: a profile from before shapes
    assert [period_of_cluster(c) for c in ids] == [24, 0, 168, 24]
    with pytest.raises(ValueError, match="not of the form"):
        period_of_cluster("weekly")


def test_direct_lags_equal_the_fft_autocorrelation():
    from tsmeta.periodicity import acf_at_lags

    rng = np.random.default_rng(5)
    x = seasonal(50, 336, 24, 0.5, rng) + np.arange(336) * 0.01
    mask = rng.random(x.shape) > 0.1
    x = np.where(mask, x, np.nan)
    lags = [1, 21, 24, 27, 147, 168, 189]
    full, full_pairs = autocorrelation(x, mask, 189)
    direct, pairs = acf_at_lags(x, mask, lags)
    np.testing.assert_allclose(direct, full[:, lags], atol=2e-5)  # float32 vs float64
    np.testing.assert_array_equal(pairs, full_pairs[:, lags])
