import math

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
