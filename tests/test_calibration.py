import math
from dataclasses import replace

import numpy as np
import pytest

from tsmeta.scoring import TailModel, fit_tail, t_sf, two_sided_tail


def test_t_sf_matches_closed_forms():
    x = np.array([0.0, 0.5, 1.0, 3.0, 10.0, 100.0])
    # dof = 1 is the Cauchy distribution
    np.testing.assert_allclose(t_sf(x, 1.0), 0.5 - np.arctan(x) / np.pi, rtol=1e-4)
    # dof = 2 has sf = 0.5 - x / (2 sqrt(2 + x^2))
    np.testing.assert_allclose(t_sf(x, 2.0), 0.5 - x / (2 * np.sqrt(2 + x**2)), rtol=1e-4)
    # normal
    normal = np.array([0.5 * math.erfc(v / math.sqrt(2)) for v in x[:5]])
    np.testing.assert_allclose(t_sf(x[:5], math.inf), normal, rtol=1e-4, atol=1e-300)


@pytest.mark.parametrize("dof", [3.0, 10.0])
def test_fit_tail_recovers_student_t(dof):
    rng = np.random.default_rng(0)
    z = np.abs(rng.standard_t(dof, size=200_000) * 1.7)
    tail = fit_tail(z)
    assert tail.scale == pytest.approx(1.7, rel=0.1)
    # the flag rate at a 0.1% false-alarm rate is close to 0.1%
    rate = (two_sided_tail(z, tail) < 1e-3).mean()
    assert 0.0005 < rate < 0.002


def test_threshold_consistent_with_tail():
    tail = TailModel(1.3, 6.0)
    thr = tail.threshold(1e-3)
    assert two_sided_tail(np.array([thr]), tail)[0] == pytest.approx(1e-3, rel=0.02)
    assert TailModel.from_dict(tail.to_dict()) == tail
    assert TailModel.from_dict(TailModel(1.0, math.inf).to_dict()).dof == math.inf


def test_fit_tail_degenerate_inputs():
    assert fit_tail(np.array([1.0, 2.0])).dof == math.inf  # too few values
    assert np.isfinite(fit_tail(np.zeros(100)).scale)


@pytest.mark.parametrize("zeros", [0.45, 0.49, 0.55])
def test_a_statistic_that_is_zero_on_about_half_the_points_is_fitted_on_the_rest(zeros):
    """Isolation is exactly 0 on every slope, about half the points: whether a little
    under or over half, the t is fitted to the nonzero values and the knots of the whole
    sample place its tail near the truth (fitted through a median that the zeros pull to
    nearly 0, it flagged 46% of points below 0.05)."""
    rng = np.random.default_rng(2)
    s = np.abs(rng.standard_normal(200_000))
    s[rng.random(s.size) < zeros] = 0.0
    tail = fit_tail(s)
    assert tail.scale > 0.5
    p = two_sided_tail(s, tail)
    for rate in (0.05, 1e-3):
        assert 0.7 * rate < (p < rate).mean() < 1.3 * rate


@pytest.mark.parametrize("dof", [1.5, 4.0, 30.0, math.inf])
def test_torch_tail_equals_the_numpy_tail(dof):
    import torch

    tail = TailModel(1.3, dof)
    z = np.concatenate([np.linspace(0, 60, 5001), np.geomspace(60, 1e7, 500), [np.nan]])
    ref = two_sided_tail(z, tail)
    got = two_sided_tail(torch.as_tensor(z, dtype=torch.float32), tail)
    assert got.dtype == torch.float64
    # float32 z: the torch path divides in float64, numpy in float32 (float32 rounding apart)
    np.testing.assert_allclose(got.numpy(), two_sided_tail(z.astype(np.float32), tail), rtol=1e-3)
    np.testing.assert_allclose(two_sided_tail(torch.as_tensor(z), tail).numpy(), ref, rtol=1e-9)
    assert np.isnan(got[-1].item())


def test_models_calibrated_with_removed_parts_still_load():
    """Per-step scales and the spread floor were removed; a stored tail and config that
    name them load without."""
    from tsmeta.meta.train import MetaConfig

    stored = {**TailModel(1.2, 5.0).to_dict(), "step_scale": [0.9] * 12 + [1.1] * 12,
              "spread_floor": 0.4}  # fmt: skip
    assert TailModel.from_dict(stored) == TailModel(1.2, 5.0)
    assert MetaConfig(without=["per_step", "veto", "spread", "drop"]).without == ("veto",)


def _light_far_tail(rng, n):
    """|z| with a t3 body whose tail beyond 3 grows only like a square root: a t fitted to
    the body (the 50th/90th percentiles) puts the far tail much too far out."""
    x = np.abs(rng.standard_t(3, size=n))
    return np.where(x > 3, 3 + np.sqrt(np.maximum(x - 3, 0.0)), x)


def test_the_empirical_tail_places_the_rate_where_the_t_fitted_to_the_body_does_not():
    rng = np.random.default_rng(1)
    tail = fit_tail(_light_far_tail(rng, 100_000))
    assert tail.knots is not None
    fresh = _light_far_tail(rng, 1_000_000)
    with_knots = (two_sided_tail(fresh, tail) < 1e-3).mean()
    t_alone = (two_sided_tail(fresh, replace(tail, knots=None)) < 1e-3).mean()
    assert 0.0007 < with_knots < 0.0014
    assert t_alone < 1e-4  # what the t alone gets wrong (10x too few flags)
    # no knots without enough points beyond the rate's quantile, or when asked for none
    assert fit_tail(_light_far_tail(rng, 400)).knots is None
    assert fit_tail(_light_far_tail(rng, 100_000), empirical=False).knots is None


def test_contamination_of_the_calibration_sample_cannot_tighten_the_tail():
    """2% gross outliers in the sample raise its empirical tail above the t's: the t
    decides, as it did without the knots."""
    rng = np.random.default_rng(2)
    z = np.abs(rng.standard_t(4, size=100_000))
    z[:2000] *= 20
    tail = fit_tail(z)
    fresh = np.abs(rng.standard_t(4, size=500_000))
    np.testing.assert_array_equal(
        two_sided_tail(fresh, tail) < 1e-3, two_sided_tail(fresh, replace(tail, knots=None)) < 1e-3
    )


@pytest.mark.parametrize("rate", [1e-2, 1e-3, 1e-6])  # within the knots and beyond the last
def test_threshold_with_knots_is_where_the_tail_reaches_the_rate(rate):
    import torch

    rng = np.random.default_rng(3)
    tail = fit_tail(_light_far_tail(rng, 100_000))
    thr = tail.threshold(rate)
    assert two_sided_tail(np.array([thr]), tail)[0] == pytest.approx(rate, rel=0.02)
    assert thr <= replace(tail, knots=None).threshold(rate)
    assert TailModel.from_dict(tail.to_dict()) == tail
    z = np.concatenate([np.linspace(0, 60, 5001), np.geomspace(60, 1e7, 500), [np.nan]])
    got = two_sided_tail(torch.as_tensor(z), tail).numpy()
    np.testing.assert_allclose(got, two_sided_tail(z, tail), rtol=1e-9)
    assert np.all(np.diff(got[:-1]) <= 0)  # a tail probability never rises with |z|


# window statistics: sustained deviations whose single points stay inside the band


def _correlated_z(rng, n, horizon=24, rho=0.6, dof=5.0):
    """(n, horizon) heavy-tailed z-scores correlated along the horizon (as forecast errors
    of one forecast are), unit-ish scale."""
    e = rng.standard_t(dof, size=(n, horizon))
    z = np.empty_like(e)
    z[:, 0] = e[:, 0]
    for h in range(1, horizon):
        z[:, h] = rho * z[:, h - 1] + math.sqrt(1 - rho**2) * e[:, h]
    return z


@pytest.mark.parametrize("width", [1, 2, 4, 5, 12, 30])
def test_window_statistics_equal_a_loop_over_centred_windows(width):
    import torch

    from tsmeta.scoring import window_medians

    rng = np.random.default_rng(width)
    n, H = 6, 10
    z = rng.normal(size=(n, H)).astype(np.float32)
    z[0, 3] = np.inf  # an observed infinity sorts like any value, not like a missing one
    z[1, :] = 2.5  # ties
    obs = rng.random((n, H)) > 0.2
    obs[2] = False  # nothing observed
    got = window_medians(torch.as_tensor(z), torch.as_tensor(obs), width).numpy()
    w = min(width, H)
    left, right = w // 2, w - 1 - w // 2
    for i in range(n):
        for t in range(H):
            if not obs[i, t]:
                assert got[i, t] == 0.0
                continue
            lo, hi = max(t - left, 0), min(t + right + 1, H)
            sel = np.sort(z[i, lo:hi][obs[i, lo:hi]].astype(np.float64))
            low_median = sel[(len(sel) - 1) // 2]  # of an even count, the lower middle one
            assert got[i, t] == pytest.approx(low_median * math.sqrt(len(sel)), abs=1e-12)


def _fit_with_windows(z):
    import torch

    from tsmeta.scoring import fit_windows

    point = fit_tail(np.abs(z).ravel())
    obs = torch.ones(z.shape, dtype=torch.bool)
    return replace(point, windows=fit_windows(torch.as_tensor(z), obs, point))


def test_window_statistics_keep_the_clean_flag_rate():
    import torch

    from tsmeta.scoring import tail_probability

    rng = np.random.default_rng(1)
    tail = _fit_with_windows(_correlated_z(rng, 8000))
    assert tail.windows is not None and tail.windows.widths == (5, 12)
    assert 1.0 <= tail.windows.factor <= 3.0
    fresh = torch.as_tensor(_correlated_z(rng, 20000))
    p = tail_probability(fresh, torch.ones(fresh.shape, dtype=torch.bool), tail).numpy()
    assert np.all((p >= 0) & (p <= 1))
    assert 0.5e-3 < (p < 1e-3).mean() < 2e-3


def test_a_sustained_shift_inside_the_band_is_flagged_only_with_windows():
    import torch

    from tsmeta.scoring import tail_probability

    rng = np.random.default_rng(2)
    tail = _fit_with_windows(_correlated_z(rng, 8000))
    thr = tail.threshold(1e-3)
    z = np.zeros((1, 24))
    z[0, 6:18] = 0.65 * thr  # twelve hours shifted, every point well inside the band
    obs = torch.ones(z.shape, dtype=torch.bool)
    with_windows = tail_probability(torch.as_tensor(z), obs, tail).numpy()[0]
    alone = tail_probability(torch.as_tensor(z), obs, tail.point).numpy()[0]
    assert (alone >= 1e-3).all()
    assert (with_windows[9:15] < 1e-3).all()
    assert (with_windows[:3] >= 1e-3).all() and (with_windows[21:] >= 1e-3).all()


def test_the_band_is_where_an_isolated_point_reaches_the_rate():
    import torch

    from tsmeta.scoring import tail_probability

    rng = np.random.default_rng(3)
    tail = _fit_with_windows(rng.standard_t(5.0, size=(8000, 24)))
    thr = tail.threshold(1e-3)
    z = np.zeros((2, 24))
    z[0, 10], z[1, 10] = 1.01 * thr, 0.99 * thr
    p = tail_probability(torch.as_tensor(z), torch.ones(z.shape, dtype=torch.bool), tail).numpy()
    assert p[0, 10] < 1e-3 <= p[1, 10]


def test_window_tails_round_trip_and_older_models_load_without_them():
    tail = _fit_with_windows(_correlated_z(np.random.default_rng(4), 4000))
    assert TailModel.from_dict(tail.to_dict()) == tail
    old = tail.point.to_dict()
    del old["windows"]
    assert TailModel.from_dict(old).windows is None


def test_one_spike_lends_its_size_to_no_neighbour():
    import torch

    from tsmeta.scoring import tail_probability

    tail = _fit_with_windows(_correlated_z(np.random.default_rng(5), 8000))
    z = np.zeros((1, 24))
    z[0, 12] = 1e6
    p = tail_probability(torch.as_tensor(z), torch.ones(z.shape, dtype=torch.bool), tail).numpy()
    assert p[0, 12] < 1e-20 and (np.delete(p[0], 12) > 0.1).all()


def test_the_tail_table_lookup_without_a_search_equals_np_interp():
    import torch

    from tsmeta.scoring.tables import _T, _X, _floored_table, _interp_table, _torch_table

    rng = np.random.default_rng(1)
    q = np.concatenate([
        rng.exponential(2.0, 20_000), rng.uniform(45.0, 60.0, 5_000),
        10 ** rng.uniform(1.5, 7.0, 5_000), _T[::7], _T[1::101] * (1 + 1e-16),
        [0.0, 1e-300, 50.0, 1e6, 2e6, np.inf],
    ])  # fmt: skip

    def _floored_table_of(key):  # noqa: ANN001, ANN202 - the t's table on the scoring grid
        return np.interp(_T, _X, _floored_table(key[1]))

    for dof in (1.5, 5.0, math.inf):
        cells = _torch_table(("t", dof), _floored_table_of, "cpu")
        got = _interp_table(torch.as_tensor(q), cells).numpy()
        want = np.interp(q, _T, _floored_table_of((None, dof)))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_the_tabulated_tails_equal_the_composition_they_stand_for():
    """Scoring reads each tail from one table over the grid (``_point_table``,
    ``_combined_table``); the table is the composition of the t, the knots and their
    minimum at every node, linear between them."""
    import torch

    from tsmeta.scoring import tail_probability
    from tsmeta.scoring.combine import _smallest_log_tail
    from tsmeta.scoring.tables import _T, _knot_arrays
    from tsmeta.scoring.tails import _exact_log_tail, _point_table, log_tail

    rng = np.random.default_rng(5)
    tail = _fit_with_windows(_correlated_z(rng, 8000))
    assert tail.knots is not None and tail.windows.knots is not None
    nodes = _T[rng.integers(0, len(_T), 5000)]
    np.testing.assert_array_equal(_point_table(tail.point)[np.searchsorted(_T, nodes)],
                                  _exact_log_tail(nodes, tail))  # fmt: skip
    u = np.concatenate([np.abs(rng.standard_t(3.0, 50_000)) * 3, [0.0, 49.9995, 1e3, 9e5]])
    exact = _exact_log_tail(u, tail)
    np.testing.assert_allclose(log_tail(u, tail), exact, rtol=0, atol=1e-3)
    # mostly far closer: beyond the knots' own cells the two differ by the curvature of
    # the t's table over one cell
    assert np.quantile(np.abs(log_tail(u, tail) - exact), 0.99) < 1e-4
    # the calibrated smallest of the point's and its windows' tails, against its formula
    z = torch.as_tensor(_correlated_z(rng, 2000))
    obs = torch.ones(z.shape, dtype=torch.bool)
    m = -_smallest_log_tail(z, obs, tail).numpy()
    ku, kp = _knot_arrays(tail.windows.knots)
    emp = np.where(m > ku[-1], kp[-1] - (m - ku[-1]), np.interp(m, ku, kp))
    want = np.minimum(np.minimum(np.log(tail.windows.factor) - m, emp), 0.0)
    got = np.log(tail_probability(z, obs, tail).numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_the_seasonal_naive_veto_lifts_what_the_day_before_explains():
    """The larger of the model's tail probability and the normal tail of the seasonal-naive
    deviation, recalibrated: a point that repeats the support's last same-phase value is
    not flagged however far it is from the forecast, one far from both is, the clean flag
    rate stays near the rate, the knots round-trip and older tails load without a veto."""
    import torch

    from tsmeta.scoring import fit_veto, naive_log_tail, tail_probability

    rng = np.random.default_rng(6)
    tail = _fit_with_windows(rng.standard_t(5.0, size=(8000, 24)))
    z_cal = torch.as_tensor(rng.standard_t(5.0, size=(8000, 24)))
    naive_cal = torch.as_tensor(rng.normal(0.0, 1.0, (8000, 24)) + 0.7 * z_cal.numpy())
    obs = torch.ones(z_cal.shape, dtype=torch.bool)
    veto, factor = fit_veto(torch.log(tail_probability(z_cal, obs, tail)), naive_cal, obs)
    vetoed = replace(tail, veto=veto, veto_factor=factor)
    assert veto is not None and 0.05 <= factor < 1.0
    assert TailModel.from_dict(vetoed.to_dict()) == vetoed
    older = {k: v for k, v in vetoed.to_dict().items() if k not in ("veto", "veto_factor")}
    assert TailModel.from_dict(older) == tail
    thr = vetoed.threshold(1e-3)
    z = torch.zeros((3, 24), dtype=torch.float64)
    z[:, 10] = 1.5 * thr
    naive = torch.full((3, 24), 0.3, dtype=torch.float64)
    naive[1, 10] = 6.0  # far from the day before too
    naive[2] = float("inf")  # no reference: no veto
    p = tail_probability(z, torch.ones(z.shape, dtype=torch.bool), vetoed, naive).numpy()
    assert p[0, 10] >= 1e-3  # the day before explains it
    assert p[1, 10] < 1e-3 and p[2, 10] < 1e-3
    assert np.isneginf(naive_log_tail(naive[2]).numpy()).all()
    # without the naive deviations, or without a veto, the model's own probability
    own = tail_probability(z, torch.ones(z.shape, dtype=torch.bool), tail).numpy()
    np.testing.assert_array_equal(
        tail_probability(z, torch.ones(z.shape, dtype=torch.bool), vetoed).numpy(), own
    )
    # the veto only ever lowers what it leaves: recalibrated, never above the model's own
    assert p[1, 10] <= own[1, 10] + 1e-15
    # clean data drawn like the calibration sample flags near the rate
    z_new = torch.as_tensor(rng.standard_t(5.0, size=(20000, 24)))
    n_new = torch.as_tensor(rng.normal(0.0, 1.0, (20000, 24)) + 0.7 * z_new.numpy())
    rate = (
        (tail_probability(z_new, torch.ones(z_new.shape, dtype=torch.bool), vetoed, n_new) < 1e-3)
        .numpy()
        .mean()
    )
    assert 0.5e-3 < rate < 2e-3


def test_the_veto_scores_with_the_scale_it_was_fitted_with():
    """TailModel.veto_scale: the naive deviation's unit is stored with the veto's fit, so a
    model scores as it was calibrated whatever NAIVE_VETO_SCALE is later; a smaller scale
    vetoes only points closer to the reference; older tails load with None (1)."""
    import torch

    from tsmeta.scoring import fit_veto, tail_probability

    rng = np.random.default_rng(7)
    tail = _fit_with_windows(rng.standard_t(5.0, size=(8000, 24)))
    z_cal = torch.as_tensor(rng.standard_t(5.0, size=(8000, 24)))
    naive_cal = torch.as_tensor(rng.normal(0.0, 1.0, (8000, 24)) + 0.7 * z_cal.numpy())
    obs = torch.ones(z_cal.shape, dtype=torch.bool)
    log_p = torch.log(tail_probability(z_cal, obs, tail))
    fitted = {}
    for scale in (1.0, 0.5):
        veto, factor = fit_veto(log_p, naive_cal, obs, scale=scale)
        fitted[scale] = replace(tail, veto=veto, veto_factor=factor, veto_scale=scale)
        assert TailModel.from_dict(fitted[scale].to_dict()) == fitted[scale]
    older = {k: v for k, v in fitted[1.0].to_dict().items() if k != "veto_scale"}
    assert TailModel.from_dict(older).veto_scale is None
    np.testing.assert_array_equal(  # None scores as 1
        tail_probability(z_cal[:50], obs[:50], TailModel.from_dict(older), naive_cal[:50]).numpy(),
        tail_probability(z_cal[:50], obs[:50], fitted[1.0], naive_cal[:50]).numpy(),
    )
    z = torch.zeros((1, 24), dtype=torch.float64)
    z[0, 10] = 2 * max(t.threshold(1e-3) for t in fitted.values())
    naive = torch.full((1, 24), 2.5, dtype=torch.float64)  # 2.5 units from the day before
    p = {s: tail_probability(z, obs[:1], t, naive)[0, 10].item() for s, t in fitted.items()}
    assert p[1.0] >= 1e-3 > p[0.5]  # the day before explains it at 1, not at 0.5
    assert fitted[1.0].point.veto_scale is None


def test_the_veto_factor_gives_back_what_contamination_hides():
    """The calibration windows' anomalies (far from the forecast and from the naive
    reference alike) fill the sample's deep tail, so the veto's knots alone cannot give the
    points it leaves back the rate it took away; the factor, read where those anomalies
    are a small part of the points, does (at least part of it), and never flags beyond
    the rate."""
    import torch

    from tsmeta.scoring import fit_veto, tail_probability

    rng = np.random.default_rng(6)
    z_cal = rng.standard_t(5.0, size=(8000, 24))
    naive_cal = rng.normal(0.0, 1.0, z_cal.shape) + 0.7 * z_cal
    bad = rng.random(z_cal.shape) < 0.02  # 2% anomalies, far from both
    z_cal[bad], naive_cal[bad] = 30.0, 30.0
    tail = _fit_with_windows(z_cal)
    z_cal, naive_cal = torch.as_tensor(z_cal), torch.as_tensor(naive_cal)
    obs = torch.ones(z_cal.shape, dtype=torch.bool)
    veto, factor = fit_veto(torch.log(tail_probability(z_cal, obs, tail)), naive_cal, obs)
    assert 0.3 < factor < 0.9
    z = torch.as_tensor(rng.standard_t(5.0, size=(40000, 24)))
    naive = torch.as_tensor(rng.normal(0.0, 1.0, z.shape) + 0.7 * z.numpy())
    new_obs = torch.ones(z.shape, dtype=torch.bool)

    def clean_rate(t: TailModel) -> float:
        return float((tail_probability(z, new_obs, t, naive) < 1e-3).double().mean())

    with_factor = clean_rate(replace(tail, veto=veto, veto_factor=factor))
    knots_alone = clean_rate(replace(tail, veto=veto))
    assert with_factor > 1.8 * knots_alone and with_factor < 1e-3
    assert with_factor <= clean_rate(tail)  # the veto never flags more than the model alone


def _isolation_loop(z, obs):
    """The isolation statistic point by point: the observed neighbours' jumps (one where
    the other is missing; none at the horizon's ends, whose neighbour is not in it)."""
    out = np.zeros(z.shape)
    for i in range(z.shape[0]):
        for t in range(1, z.shape[1] - 1):  # the horizon's ends: a neighbour unseen, 0
            if not obs[i, t]:
                continue
            jumps = [z[i, t] - z[i, u] for u in (t - 1, t + 1) if 0 <= u < z.shape[1] and obs[i, u]]
            if not jumps:
                continue
            if len(jumps) == 1:
                out[i, t] = jumps[0]
            elif np.sign(jumps[0]) == np.sign(jumps[1]):
                out[i, t] = np.sign(jumps[0]) * min(abs(jumps[0]), abs(jumps[1]))
    return out


def test_isolation_equals_a_loop_over_neighbours():
    import torch

    from tsmeta.scoring import isolation

    rng = np.random.default_rng(11)
    z = rng.standard_normal((40, 24))
    obs = rng.random(z.shape) > 0.2
    obs[0] = False  # nothing observed
    obs[1] = False
    obs[1, 5] = True  # one point alone: no neighbour, 0
    got = isolation(torch.as_tensor(z), torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(got, _isolation_loop(z, obs), rtol=0, atol=1e-12)
    assert (got[0] == 0).all() and (got[1] == 0).all()


def test_contrast_sigma_equals_a_direct_computation():
    import torch

    from tsmeta.meta.calibrate import contrast_sigma

    rng = np.random.default_rng(12)
    r = rng.standard_normal((30, 24))
    m = rng.random(r.shape) > 0.15
    got = contrast_sigma(torch.as_tensor(r), torch.as_tensor(m, dtype=torch.float64), 0.0).numpy()
    for i in range(len(r)):
        c = []
        for t in range(24):
            nb = [r[i, u] for u in (t - 1, t + 1) if 0 <= u < 24 and m[i, u]]
            if m[i, t] and nb:
                c.append(r[i, t] - np.mean(nb))
        a = np.sort(np.abs(c))
        assert got[i] == pytest.approx(1.4826 * a[(len(a) - 1) // 2], rel=1e-9)


def test_fit_tail_of_a_sample_of_mostly_zeros_keeps_its_rate():
    """isolation is 0 at every slope and step: more than half a sample can be zeros. The
    t is then fitted to the nonzero values and the knots place the whole sample's tail
    (a normal sized from the 90th percentile, as before, flagged it 26x too often at 1e-3
    and 4.4x at 1e-2)."""
    rng = np.random.default_rng(13)
    z = np.where(rng.random(400_000) < 0.6, 0.0, np.abs(rng.standard_t(3.0, 400_000)))
    tail = fit_tail(z)
    assert tail.knots is not None
    fresh = np.where(rng.random(400_000) < 0.6, 0.0, np.abs(rng.standard_t(3.0, 400_000)))
    for rate in (1e-2, 1e-3):
        assert 0.5 * rate < (two_sided_tail(fresh, tail) < rate).mean() < 2 * rate


def _fit_with_isolation(z):
    import torch

    from tsmeta.scoring import fit_windows

    point = fit_tail(np.abs(z).ravel())
    obs = torch.ones(z.shape, dtype=torch.bool)
    rel = torch.ones(z.shape[0], dtype=torch.float64)
    return replace(point, windows=fit_windows(torch.as_tensor(z), obs, point, rel=rel))


def test_a_spike_inside_the_band_is_flagged_by_its_isolation_alone():
    """Forecast errors that drift smoothly (rho 0.95) make a wide band; a spike inside it
    jumps far from both neighbours and is flagged, its neighbours are not, and fresh
    clean data keeps the rate."""
    import torch

    from tsmeta.scoring import tail_probability

    rng = np.random.default_rng(14)
    tail = _fit_with_isolation(_correlated_z(rng, 8000, rho=0.95))
    assert tail.windows.isolation is not None
    thr = tail.threshold(1e-3)
    z = np.zeros((1, 24))
    z[0, 12] = 0.6 * thr
    obs = torch.ones(z.shape, dtype=torch.bool)
    ones = torch.ones(1, dtype=torch.float64)
    with_iso = tail_probability(torch.as_tensor(z), obs, tail, rel=ones).numpy()[0]
    without = tail_probability(torch.as_tensor(z), obs, tail).numpy()[0]
    assert with_iso[12] < 1e-3 <= without[12]
    assert (np.delete(with_iso, 12) >= 1e-3).all()
    fresh = torch.as_tensor(_correlated_z(rng, 20000, rho=0.95))
    p = tail_probability(fresh, torch.ones(fresh.shape, dtype=torch.bool), tail,
                         rel=torch.ones(len(fresh), dtype=torch.float64)).numpy()  # fmt: skip
    assert 0.5e-3 < (p < 1e-3).mean() < 2e-3
    # round trip; tails fitted before isolation existed load without it
    assert TailModel.from_dict(tail.to_dict()) == tail
    old = tail.to_dict()
    del old["windows"]["isolation"]
    assert TailModel.from_dict(old).windows.isolation is None


def _onset_loop(z, obs):
    """The onset statistic point by point: the levels two neighbouring points agree on."""
    H = z.shape[1]

    def pair(i, a, b):
        got = [z[i, u] for u in (a, b) if 0 <= u < H and obs[i, u]]
        if not got:
            return None
        if len(got) == 1:
            return got[0]
        if np.sign(got[0]) != np.sign(got[1]):
            return 0.0
        return got[0] if abs(got[0]) < abs(got[1]) else got[1]

    def edge(side, other):
        if side is None or other is None or not abs(side) > abs(other):
            return 0.0
        return side - other

    out = np.zeros(z.shape)
    for i in range(z.shape[0]):
        for t in range(H):
            if obs[i, t]:
                into = edge(pair(i, t, t + 1), pair(i, t - 2, t - 1))
                out_of = edge(pair(i, t - 1, t), pair(i, t + 1, t + 2))
                out[i, t] = into if abs(into) >= abs(out_of) else out_of
    return out


def test_onset_equals_a_loop_over_neighbouring_levels():
    import torch

    from tsmeta.scoring import onset

    rng = np.random.default_rng(15)
    z = rng.standard_normal((60, 24))
    obs = rng.random(z.shape) > 0.2
    obs[0] = False  # nothing observed
    z[1] = 0.1 * rng.standard_normal(24)
    z[1, 8:14] += 5.0  # a level shift of six steps
    obs[1] = True
    got = onset(torch.as_tensor(z), torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(got, _onset_loop(z, obs), rtol=0, atol=1e-12)
    assert (got[0] == 0).all()
    # the shift's first two and last two points score its size (a level two points
    # straddling its edge agree on is the series' own), the points outside it far less
    assert (got[1, [8, 9, 12, 13]] > 4.5).all()
    assert (np.abs(got[1, :8]) < 1.0).all() and (np.abs(got[1, 14:]) < 1.0).all()


def test_a_level_shift_inside_the_band_is_flagged_at_its_onset():
    """Forecast errors that drift smoothly (rho 0.95) make a wide band and wide window
    tails; a level shift of 0.6 band widths for six steps leaves from and returns to the
    series abruptly: its first and last points are flagged by the onset alone, the points
    outside it are not, one spike makes no onset of its neighbours, and fresh clean data
    keeps the rate. Tails fitted before the onset existed load without it."""
    import torch

    from tsmeta.scoring import fit_windows, onset, tail_probability

    rng = np.random.default_rng(16)
    cal = _correlated_z(rng, 8000, rho=0.95)
    point = fit_tail(np.abs(cal).ravel())
    obs8k = torch.ones(cal.shape, dtype=torch.bool)
    ones8k = torch.ones(len(cal), dtype=torch.float64)
    tail = replace(point, windows=fit_windows(torch.as_tensor(cal), obs8k, point, rel=ones8k))
    no_onset = replace(point, windows=fit_windows(torch.as_tensor(cal), obs8k, point,
                                                   rel=ones8k, onsets=False))  # fmt: skip
    assert tail.windows.onset is not None and no_onset.windows.onset is None
    thr = tail.threshold(1e-3)
    z = np.zeros((2, 24))
    z[0, 8:14] = 0.6 * thr
    z[1, 12] = 0.6 * thr  # a spike: its neighbours are no onset
    obs = torch.ones(z.shape, dtype=torch.bool)
    ones = torch.ones(2, dtype=torch.float64)
    p = tail_probability(torch.as_tensor(z), obs, tail, rel=ones).numpy()
    before = tail_probability(torch.as_tensor(z), obs, no_onset, rel=ones).numpy()
    assert p[0, 8] < 1e-3 <= before[0, 8] and p[0, 13] < 1e-3 <= before[0, 13]
    assert (p[0, :8] >= 1e-3).all() and (p[0, 14:] >= 1e-3).all()
    assert (onset(torch.as_tensor(z), obs).numpy()[1, [10, 11, 13, 14]] == 0).all()
    fresh = torch.as_tensor(_correlated_z(rng, 20000, rho=0.95))
    q = tail_probability(fresh, torch.ones(fresh.shape, dtype=torch.bool), tail,
                         rel=torch.ones(len(fresh), dtype=torch.float64)).numpy()  # fmt: skip
    assert 0.5e-3 < (q < 1e-3).mean() < 2e-3
    assert TailModel.from_dict(tail.to_dict()) == tail
    old = tail.to_dict()
    del old["windows"]["onset"]
    assert TailModel.from_dict(old).windows.onset is None


def _noise_tasks(rng, n, k=24, h=24):
    """Tasks a zero network forecasts as 0: out-of-sample z = y_query / the support's
    robust scale (t-distributed noise, each task its own scale), with a seasonal-naive
    reference near every point."""
    import torch

    from tsmeta.meta.tasks import TaskBatch

    scale = rng.uniform(0.5, 2.0, size=(n, 1))
    ys = scale * rng.standard_t(6.0, size=(n, k))
    yq = scale * rng.standard_t(6.0, size=(n, h))
    naive = yq / scale + rng.normal(0.0, 1.5, size=(n, h))
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return TaskBatch(t(np.zeros((n, k, 8))), t(ys), t(np.ones((n, k))), t(np.zeros((n, h, 8))), t(yq),
                     t(np.ones((n, h))), t(np.zeros(n)), t(np.ones(n)), spread=t(np.zeros(n)),
                     naive=t(naive))  # fmt: skip


def test_an_ablation_leaves_out_exactly_the_named_parts():
    """``MetaConfig.without`` names calibration parts to leave out (the ablation of
    ``benchmarks/families.py``): an unknown name is refused, a stored list loads as a tuple,
    and the parts left out are absent from the fitted tail (so scoring leaves them out too)."""
    import torch

    from tsmeta.forecaster import init_params
    from tsmeta.meta.calibrate import CALIBRATION_PARTS, calibrate
    from tsmeta.meta.train import MetaConfig

    with pytest.raises(ValueError, match="unknown calibration part.*'vet'"):
        MetaConfig(without=("vet",))
    assert MetaConfig(without=["veto"]).without == ("veto",)
    params = {k: torch.zeros_like(v) for k, v in init_params(8, 16, torch.Generator()).items()}
    batch = _noise_tasks(np.random.default_rng(3), 2048)
    full = calibrate(params, batch, 0, 0.1)
    assert full.veto is not None and full.windows is not None and full.windows.onset is not None
    off = {p: calibrate(params, batch, 0, 0.1, **{p: False}) for p in CALIBRATION_PARTS}
    assert off["veto"].veto is None and off["veto"].windows is not None
    assert off["windows"].windows is None and off["weekdays"].weekday_scale is None
    assert off["onsets"].windows.onset is None and off["onsets"].windows.isolation is not None
    assert off["isolation"].windows.isolation is None and off["empirical"].knots is None


def test_weekday_of_the_grid_and_the_weekday_scale_recovers_a_noisier_monday():
    """Global grid steps count from 1970-01-01 00:00 UTC (a Thursday); nights of a weekday
    whose residuals run 2x wider (a Monday adapted from a quiet Sunday) get a factor of
    about 2 and the others about 1; a tail model keeps it through a round trip."""
    from datetime import UTC, datetime

    from tsmeta.data.panel import steps_since_epoch
    from tsmeta.scoring import fit_weekday_scale, weekday_of

    monday = datetime(2026, 12, 7, tzinfo=UTC)
    assert weekday_of(int(steps_since_epoch(monday, "h")), 24) == 0
    assert weekday_of(int(steps_since_epoch(monday, "d")) + 6, 1) == 6
    rng = np.random.default_rng(0)
    weekday = rng.integers(0, 7, 7000)
    z = np.abs(rng.standard_normal((7000, 24))) * np.where(weekday == 0, 2.0, 1.0)[:, None]
    scale = fit_weekday_scale(z, np.ones_like(z, dtype=bool), weekday)
    assert all(abs(s / scale[1] - 1) < 0.08 for s in scale[1:])
    assert scale[0] / scale[1] == pytest.approx(2.0, rel=0.08)
    tail = replace(fit_tail(z.ravel()), weekday_scale=scale)
    back = TailModel.from_dict(tail.to_dict())
    assert back.weekday_scale == scale and back.weekday(0) == scale[0]
    assert TailModel.from_dict({**tail.to_dict(), "weekday_scale": None}).weekday(0) == 1.0
