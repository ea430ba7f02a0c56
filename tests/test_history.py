"""A series judged against its own past: residual history, own tails, alerts."""

import numpy as np
import pytest
from scipy.stats import norm

from tsmeta.scoring.history import MIN_HISTORY, ResidualHistory, own_tail


def test_history_merged_night_by_night_equals_the_statistics_of_all_residuals():
    rng = np.random.default_rng(3)
    r = rng.normal([[5.0], [-2.0], [0.0]], [[1.0], [30.0], [0.01]], size=(3, 700))
    r[1, ::4] = np.nan  # missing points are not residuals
    r[2, 100:400] = np.nan  # a night with none
    h = ResidualHistory.empty(3)
    for c in range(0, 700, 100):
        h = h.merged(r[:, c : c + 100])
    for i in range(3):
        x = r[i][~np.isnan(r[i])]
        assert h.count[i] == x.size
        assert h.mean[i] == pytest.approx(x.mean(), rel=1e-12)
        assert np.sqrt(h.m2[i] / h.count[i]) == pytest.approx(x.std(), rel=1e-10)


def test_own_tail_is_the_normal_tail_against_the_series_own_scale_and_needs_history():
    h = ResidualHistory.empty(2).merged(np.array([[1.0, 3.0] * 10, [10.0, 30.0] * 10]))
    # mean 2 and 20, standard deviation 1 and 10: the same residual, ten times less surprising
    t = own_tail(np.array([[5.0, 2.0, np.nan], [50.0, 5.0, 20.0]]), h)
    assert t[0, 0] == pytest.approx(2 * norm.sf(3.0)) and t[1, 0] == pytest.approx(2 * norm.sf(3.0))
    assert t[0, 1] == 1.0 and np.isnan(t[0, 2])
    assert t[1, 1] == pytest.approx(2 * norm.sf(1.5))
    short = ResidualHistory.empty(1).merged(np.ones((1, MIN_HISTORY - 1)))
    assert np.isnan(own_tail(np.array([[1.0]]), short)).all()
    flat = ResidualHistory.empty(1).merged(np.zeros((1, MIN_HISTORY)))  # never varied
    assert own_tail(np.array([[0.0, 1e-3]]), flat).tolist() == [[1.0, 0.0]]


def test_history_rejects_rows_of_other_series():
    with pytest.raises(ValueError, match="one row per series"):
        ResidualHistory.empty(2).merged(np.zeros((3, 5)))


def _day(residual: np.ndarray, tail: np.ndarray, ids: list[str], level=None):  # noqa: ANN001
    from tsmeta.detect import BASIS, ScoredDay

    n, h = residual.shape
    zeros = np.zeros((n, h))
    return ScoredDay(series_ids=np.array(ids), cols=np.arange(h), value=residual.copy(),
                     observed=~np.isnan(residual), forecast=zeros, lower=zeros, upper=zeros,
                     residual=residual, tail=tail, flag=tail < 1e-3,
                     support_points=np.full(n, 24), basis=np.full(n, BASIS.index("adapted")),
                     level=level)  # fmt: skip


@pytest.mark.parametrize("by_level", [True, False])
def test_a_busy_hour_and_a_quiet_one_are_compared_with_the_past_at_one_level(by_level):
    """Counts: residuals twice as wide in the busy hours (level factor 2) as a scale of one
    and half as wide in the quiet ones. With the level factors (``ScoredDay.level``) the
    history holds residuals at one level: a quiet-hour residual 5 of its widths out is
    rare, a busy-hour one 2.5 widths out is not. Without them, one pooled scale inverts both."""
    from tsmeta.jobs.history import NightHistory

    level = np.where((np.arange(24) >= 8) & (np.arange(24) < 20), 2.0, 0.5)[None, :]
    rng = np.random.default_rng(1)
    history = NightHistory()
    for _ in range(6):
        past = level * rng.normal(0.0, 1.0, (1, 24))
        history.apply(_day(past, np.full((1, 24), 0.5), ["a"], level if by_level else None), 1e-3)
        history = history.next()
    res = np.zeros((1, 24))
    res[0, 2], res[0, 12] = 0.5 * 5.0, 2.0 * 2.5  # a quiet hour, a busy one
    day = history.apply(_day(res, np.full((1, 24), 1e-6), ["a"], level if by_level else None), 1e-3)
    assert day.flag[0, [2, 12]].tolist() == ([True, False] if by_level else [False, True])


def test_a_night_keeps_a_flag_only_where_the_series_own_history_also_calls_it_rare(tmp_path):
    from datetime import date

    from tsmeta.config import load_settings
    from tsmeta.jobs.history import KEEP_NIGHTS, NightHistory, history_dir

    settings = load_settings(data_dir=tmp_path)
    rng = np.random.default_rng(0)
    noisy = rng.normal(0, 10, (1, 24))  # "a" has always been noisy, "b" calm
    calm = rng.normal(0, 0.1, (1, 24))
    first = NightHistory.stored(settings, date(2026, 1, 2))  # nothing saved yet: empty
    first.apply(_day(np.vstack([noisy, calm]), np.full((2, 24), 0.5), ["a", "b"]), 1e-3)
    first.save(settings, date(2026, 1, 2))
    tonight = NightHistory.stored(settings, date(2026, 1, 3))
    # a residual of 5, which the cluster's tail calls rare, at both series
    res = np.zeros((2, 24))
    res[:, 5] = 5.0
    tail = np.full((2, 24), 0.5)
    tail[:, 5] = 1e-6
    day = tonight.apply(_day(res, tail, ["a", "b"]), 1e-3)
    assert day.flag[:, 5].tolist() == [False, True]  # ordinary for "a", rare for "b"
    assert (day.tail >= tail).all() and day.flag.sum() == 1
    # a series new tonight has no history: the cluster's tail alone
    new = tonight.apply(_day(res[:1], tail[:1], ["c"]), 1e-3)
    assert new.flag[0, 5] and new.tail[0, 5] == 1e-6
    state = tonight.state().sort("series_id")
    assert state["series_id"].to_list() == ["a", "b", "c"]
    assert state["count"].to_list() == [48.0, 48.0, 24.0]
    # re-running the night reads the same state; old states are dropped
    assert NightHistory.stored(settings, date(2026, 1, 3)).prior.equals(tonight.prior)
    tonight.save(settings, date(2026, 1, 3))
    NightHistory().save(settings, date(2026, 1, 3 + KEEP_NIGHTS))  # the 2nd is too old now
    names = sorted(p.name for p in history_dir(settings).iterdir())
    assert names == ["night=2026-01-03.parquet", f"night=2026-01-{3 + KEEP_NIGHTS:02d}.parquet"]


def test_a_flagged_point_alerts_only_when_it_beats_every_tail_since_the_night_before():
    from tsmeta.jobs.history import NightHistory

    quiet = np.zeros((1, 6))
    tail = np.array([[0.5, 1e-4, 1e-4, 1e-6, 0.5, 1e-5]])  # a run, it grows, a weaker one
    first = NightHistory().apply(_day(quiet, tail, ["a"]), 1e-3)
    assert first.flag.tolist() == [[False, True, True, True, False, True]]
    assert first.alert.tolist() == [[False, True, False, True, False, False]]
    # the next night: the points below last night's smallest tail (1e-6) alone alert
    carried = NightHistory()
    carried.apply(_day(quiet, tail, ["a"]), 1e-3)
    nxt = carried.next().apply(_day(quiet, np.array([[1e-5, 1e-7, 0.5, 1e-8, 1e-8, 0.5]]),
                                    ["a"]), 1e-3)  # fmt: skip
    assert nxt.alert.tolist() == [[False, True, False, True, False, False]]
    # a state saved before alerts existed reads as "nothing surprising before"
    old = carried.state().drop("min_tail")
    again = NightHistory(old).apply(_day(quiet, tail, ["a"]), 1e-3)
    assert again.alert.tolist() == first.alert.tolist()
