import math
from dataclasses import replace

import numpy as np
import pytest

from tsmeta.calibration import TailModel, fit_tail, t_sf, two_sided_tail


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


def test_per_step_scale_recovers_errors_growing_with_the_horizon():
    from tsmeta.calibration import fit_step_scale

    rng = np.random.default_rng(3)
    growth = np.linspace(0.5, 2.0, 24)
    z = np.abs(rng.standard_normal((4000, 24)) * growth)
    observed = rng.random(z.shape) > 0.1
    steps = np.asarray(fit_step_scale(z, observed))
    np.testing.assert_allclose(steps / steps.mean(), growth / growth.mean(), rtol=0.08)
    # too few points at a step: 1; nothing observed: None
    sparse = observed.copy()
    sparse[:, 5] = False
    assert fit_step_scale(z, sparse)[5] == 1.0
    assert fit_step_scale(z, np.zeros_like(observed)) is None
    # a tail fitted per step is lighter than one fitted to the mixture of scales
    mixed = fit_tail(z[observed])
    per_step = fit_tail((z / steps)[observed])
    assert per_step.dof > mixed.dof
    tail = TailModel(per_step.scale, per_step.dof, tuple(steps))
    assert TailModel.from_dict(tail.to_dict()) == tail
    assert TailModel.from_dict({"scale": 1.0, "dof": None}).steps(24).tolist() == [1.0] * 24
    with pytest.raises(ValueError, match="calibrated for 24 forecast steps, not 48"):
        tail.steps(48)


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
