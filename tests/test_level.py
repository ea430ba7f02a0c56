"""Noise that grows with the level (``tsmeta.scoring.level``): counts are noisier busy."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_the_level_power_is_the_one_the_noise_grows_with(power):
    """|z| growing as ratio**power gives that power back (0: None, one scale); levels that
    barely vary, or too few points, give None."""
    from tsmeta.scoring.level import fit_level_power

    rng = np.random.default_rng(int(power * 10))
    ratio = np.exp(rng.uniform(np.log(0.2), np.log(5.0), (3000, 24)))
    z = np.abs(rng.standard_t(6.0, (3000, 24))) * ratio**power
    observed = np.ones_like(z, dtype=bool)
    assert fit_level_power(z, ratio, observed) == (power or None)
    flat = rng.uniform(0.95, 1.05, z.shape)
    assert fit_level_power(z, flat, observed) is None
    assert fit_level_power(z[:10], ratio[:10], observed[:10]) is None


def test_the_level_ratio_is_the_forecast_over_the_support_mean():
    import torch

    from tsmeta.scoring.level import level_factor, level_ratio

    forecast = torch.tensor([[50.0, 400.0, -3.0], [5.0, 5.0, 5.0]])
    loc = torch.tensor([100.0, -2.0])
    r = level_ratio(forecast, loc)
    assert r[0].tolist() == pytest.approx([0.5, 4.0, 0.1])  # clipped at 0.1
    assert r[1].tolist() == [1.0, 1.0, 1.0]  # a support mean that is not positive: no level
    assert (level_factor(forecast, loc, 0.0) == 1).all()
    assert level_factor(forecast, loc, 0.5)[0].tolist() == pytest.approx([0.5**0.5, 2.0, 0.1**0.5])
    per_row = level_factor(forecast, loc, torch.tensor([[1.0], [0.5]]))  # each row its power
    assert (
        per_row[0].tolist() == pytest.approx([0.5, 4.0, 0.1]) and per_row[1].tolist() == [1.0] * 3
    )


def _count_tasks(rng, n, k=24, h=24):
    """Poisson counts around a daily shape, each series its own level and phase, forecast
    exactly (a zero network on targets relative to the true mean): out-of-sample residuals
    are the counts' own noise, wider where the series is busy."""
    import torch

    from tsmeta.meta.tasks import TaskBatch

    level = rng.uniform(20, 200, (n, 1))
    hours = (np.arange(-k, h)[None, :] + rng.integers(0, 24, (n, 1))) % 24
    mean = level * (1 + 0.85 * np.sin(2 * np.pi * hours / 24))
    y = rng.poisson(mean).astype(np.float64)
    loc, scale = y[:, :k].mean(1, keepdims=True), y[:, :k].std(1, keepdims=True)
    norm, base = (y - loc) / scale, (mean - loc) / scale
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return TaskBatch(t(np.zeros((n, k, 8))), t(norm[:, :k] - base[:, :k]), t(np.ones((n, k))),
                     t(np.zeros((n, h, 8))), t(norm[:, k:] - base[:, k:]), t(np.ones((n, h))),
                     t(loc[:, 0]), t(scale[:, 0]), base_s=t(base[:, :k]),
                     base_q=t(base[:, k:]))  # fmt: skip


def test_counts_flag_their_busy_and_their_quiet_hours_alike():
    """Count series with their own levels and daily phases (a cluster's weekday factors
    cannot follow them): calibrated with the level power (0.5, as Poisson noise grows), a fresh clean
    sample flags its busiest and its quietest fifth of points near the rate; with one scale
    per series the busy points flag above the rate and the quiet ones almost never."""
    import torch

    from tsmeta.forecaster import init_params
    from tsmeta.meta.calibrate import calibrate, robust_sigma
    from tsmeta.scoring import tail_probability
    from tsmeta.scoring.level import level_factor, level_ratio

    rng = np.random.default_rng(5)
    params = {k: torch.zeros_like(v) for k, v in init_params(8, 16, torch.Generator()).items()}
    with_level = calibrate(params, _count_tasks(rng, 6000), 0, 0.1)
    one_scale = calibrate(params, _count_tasks(rng, 6000), 0, 0.1, level=False)
    assert with_level.level_power == 0.5 and one_scale.level_power is None
    fresh = _count_tasks(rng, 12000)
    forecast = fresh.forecast(torch.zeros_like(fresh.yq))
    ratio = level_ratio(forecast, fresh.loc)
    busy, quiet = ratio >= ratio.quantile(0.8), ratio <= ratio.quantile(0.2)
    sigma = robust_sigma(-fresh.ys, fresh.ms)[:, None]
    rate = 1e-2
    rates = {}
    for name, tail in (("level", with_level), ("one", one_scale)):
        z = -fresh.yq / sigma
        z = z / level_factor(forecast, fresh.loc, tail.level_power or 0.0)
        flag = tail_probability(z, fresh.mq > 0, tail) < rate
        rates[name] = (float(flag[busy].float().mean()), float(flag[quiet].float().mean()))
    (lb, lq), (ob, oq) = rates["level"], rates["one"]
    assert 0.5 * rate < lb < 2 * rate and 0.5 * rate < lq < 2 * rate, rates
    assert ob > 1.3 * rate and oq < 0.1 * rate, rates
