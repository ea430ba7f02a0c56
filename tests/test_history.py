"""A series judged against its own past: residual history, own tails, alerts."""

import math

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


def _nights(history: ResidualHistory, nights: np.ndarray) -> ResidualHistory:
    for night in nights:  # (nights, series, steps)
        history = history.merged(night)
    return history


def test_a_series_whose_nights_are_often_wild_gets_a_heavy_tail_of_its_own():
    """Bursty residuals (a t of 4 degrees of freedom, unit variance) leave a normal night's
    band on about a fifth of their nights: their own tail becomes a t (``tail_dof``), and
    each kind of series then flags about the configured share of its clean points at 1e-3,
    where a normal own tail flags the bursty ones 10x too often."""
    from tsmeta.scoring.history import MIN_TAIL_HISTORY, wild_z

    rng = np.random.default_rng(8)
    n, steps = 300, 24
    normal = rng.standard_normal((60, n, steps))  # two months of nights
    bursty = rng.standard_t(4, size=(60, n, steps)) / math.sqrt(2.0)
    hist = _nights(ResidualHistory.empty(2 * n), np.concatenate([normal, bursty], axis=1))
    # nights count once judged against MIN_TAIL_HISTORY residuals: from the tenth
    assert hist.nights.max() == 60 - math.ceil(MIN_TAIL_HISTORY / steps)
    assert 0.03 < hist.wild[:n].mean() / hist.nights[0] < 0.06  # wild after calm: ~0.0475
    dof = hist.tail_dof(steps)
    assert np.isinf(dof[:n]).mean() > 0.95 and np.isfinite(dof[n:]).mean() > 0.6
    fresh = np.vstack([rng.standard_normal((n, 240)), rng.standard_t(4, size=(n, 240)) / 2**0.5])
    nights = [fresh[:, c : c + steps] for c in range(0, 240, steps)]
    rate = np.mean([(own_tail(x, hist) < 1e-3).reshape(2, -1).mean(axis=1) for x in nights], 0)
    assert 0.5e-3 < rate[0] < 2e-3 and 0.5e-3 < rate[1] < 3e-3, rate
    plain = ResidualHistory(hist.count[n:], hist.mean[n:], hist.m2[n:])  # no tail weight
    assert np.mean([(own_tail(x[n:], plain) < 1e-3).mean() for x in nights]) > 3 * rate[1]
    assert wild_z(24) == pytest.approx(3.07, abs=0.01)


def test_one_wild_episode_does_not_make_a_series_heavy_tailed():
    """How often, not how far: an anomaly of 30 sds over two nights running is one episode,
    and leaves the tail normal: the series' next spike is as surprising as before."""
    rng = np.random.default_rng(9)
    nights = rng.standard_normal((30, 1, 24))
    nights[10, 0, 5] += 30.0
    nights[11, 0, 3:9] += 30.0
    hist = _nights(ResidualHistory.empty(1), nights)
    assert hist.wild[0] >= 1 and np.isinf(hist.tail_dof(24)[0])
    z = (8.0 - hist.mean[0]) / math.sqrt(hist.m2[0] / hist.count[0])
    assert own_tail(np.array([[8.0]]), hist)[0, 0] == pytest.approx(2 * norm.sf(z))


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
    rare, a busy-hour one 2.5 widths out is not. Without them, one pooled scale misses it."""
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
    if by_level:
        assert day.flag[0, [2, 12]].tolist() == [True, False]
    else:  # one pooled scale misses the quiet hour's (and its nights look heavy-tailed)
        assert not day.flag[0, 2]


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
    last = f"2026-01-{3 + KEEP_NIGHTS:02d}"
    assert names == ["combine-night=2026-01-03.parquet", f"combine-night={last}.parquet",
                     "events-night=2026-01-03.parquet", f"events-night={last}.parquet",
                     "held-night=2026-01-03.parquet", f"held-night={last}.parquet",
                     "night=2026-01-03.parquet", f"night={last}.parquet"]  # fmt: skip


def _events(*spans: tuple[str, str, str]):  # noqa: ANN202 - (cluster, start, end) ISO hours
    from datetime import UTC, datetime

    import polars as pl

    def at(iso: str) -> datetime:
        return datetime.fromisoformat(iso).replace(tzinfo=UTC)

    return pl.DataFrame({"cluster_id": [c for c, _, _ in spans],
                         "start_ts": [at(a) for _, a, _ in spans],
                         "end_ts": [at(b) for _, _, b in spans]},
                        schema={"cluster_id": pl.String, "start_ts": pl.Datetime("us", "UTC"),
                                "end_ts": pl.Datetime("us", "UTC")})  # fmt: skip


def test_earlier_shared_events_are_left_out_of_what_a_night_adapts_from():
    """A holiday (a shared event of the cluster, or a date of the calendar) is unobserved
    in the window of the nights after it, never in the night scored itself nor (an event)
    for other clusters; a series that would keep under half of its K support points keeps
    them all (a new normal)."""
    from datetime import date, datetime

    from tsmeta.data.panel import Panel
    from tsmeta.jobs.history import NightHistory

    start = datetime(2026, 1, 1)  # a window of 3 days, the night the last 24 hours
    values = np.arange(3 * 72, dtype=np.float32).reshape(3, 72)
    mask = np.ones_like(values, dtype=bool)
    mask[2, 30:40] = False  # series 2 misses half of its support already
    panel = Panel(values.copy(), mask.copy(), np.array(["a", "b", "c"]), start, "h")
    history = NightHistory(events=_events(("p24-0", "2026-01-01T09:00", "2026-01-01T17:00"),
                                          ("p24-0", "2026-01-02T20:00", "2026-01-03T05:00"),
                                          ("p168-0", "2026-01-02T00:00", "2026-01-02T12:00")))  # fmt: skip
    out = history.without_events(panel, "p24-0", k=24, horizon=24)
    gone = np.zeros(72, dtype=bool)
    gone[9:17] = gone[44:48] = True  # the second event's hours in the night stay
    assert (out.mask[:2] == ~gone).all() and np.isnan(out.values[:2, gone]).all()
    assert (out.values[:2, ~gone] == values[:2, ~gone]).all()
    # series 2 keeps 10 of its 14 observed support points: more than half, so they go too
    assert (out.mask[2] == (mask[2] & ~gone)).all()
    assert history.without_events(panel, "aperiodic-0", 24, 24) is panel  # no events of its own
    # a known holiday (the calendar) is left out whole, for every cluster
    known = history.without_events(panel, "aperiodic-0", k=48, horizon=24,
                                   holidays=[date(2026, 1, 1), date(2026, 1, 3)])  # fmt: skip
    assert not known.mask[:2, :24].any() and (known.mask[:, 24:] == mask[:, 24:]).all()
    assert (known.mask[2] == mask[2]).all()  # 14 of its 38 support points left: kept
    # K = 24 with a day-long event: the support would be gone, so it is kept
    long = NightHistory(events=_events(("p24-0", "2026-01-02T00:00", "2026-01-03T00:00")))
    kept = long.without_events(panel, "p24-0", k=24, horizon=24)
    assert (kept.mask == mask).all()
    # K = 48: the day-long event leaves half of the support, so it goes
    half = long.without_events(panel, "p24-0", k=48, horizon=24)
    assert not half.mask[0, 24:48].any() and half.mask[0, :24].all()


def test_without_a_period_a_filled_support_is_divided_by_the_shared_factor():
    """An aperiodic cluster (walks): the night after a day-long shared event (at 0.6x)
    adapts from that day divided by the event's shared factor, the median over the series
    of their median over the event over their median over the K points before it: each
    walk keeps its own move, the event's is divided out (its forecast no longer starts at
    the holiday's level). Under MIN_FACTOR_SERIES series with both medians it is kept."""
    from datetime import datetime

    from tsmeta.data.panel import Panel
    from tsmeta.event_windows import MIN_FACTOR_SERIES
    from tsmeta.jobs.history import NightHistory

    g = np.random.default_rng(3)
    n = 8  # 4 days: two ordinary, the event, the night scored
    walk = np.exp(np.cumsum(g.normal(0, 0.01, (n, 96)), 1))
    values = (100 * np.arange(1, n + 1)[:, None] * walk).astype(np.float32)
    values[:, 48:72] *= np.float32(0.6)
    mask = np.ones_like(values, dtype=bool)
    history = NightHistory(events=_events(("aperiodic-0", "2026-01-03T00:00", "2026-01-04T00:00")))
    panel = Panel(values.copy(), mask.copy(), np.array(list("abcdefgh")), datetime(2026, 1, 1), "h")
    out = history.without_events(panel, "aperiodic-0", k=24, horizon=24)
    ratios = np.median(values[:, 48:72], 1) / np.median(values[:, 24:48], 1)
    shared = np.median(ratios)
    assert 0.55 < shared < 0.65
    np.testing.assert_allclose(out.values[:, 48:72], values[:, 48:72] / shared, rtol=1e-5)
    assert out.mask.all()  # kept, rescaled
    assert (out.values[:, :48] == values[:, :48]).all() and (
        out.values[:, 72:] == values[:, 72:]
    ).all()
    # each walk keeps its own move over the event: the support's ratios to the day before
    # are the series' own ratios over the shared one
    back = np.median(out.values[:, 48:72], 1) / np.median(values[:, 24:48], 1)
    np.testing.assert_allclose(back, ratios / shared, rtol=1e-5)
    few = Panel(values[: MIN_FACTOR_SERIES - 1].copy(), mask[: MIN_FACTOR_SERIES - 1].copy(),
                np.array(list("abcd")), datetime(2026, 1, 1), "h")  # fmt: skip
    kept = history.without_events(few, "aperiodic-0", k=24, horizon=24)
    assert (kept.values == values[: MIN_FACTOR_SERIES - 1]).all() and kept.mask.all()


def test_an_event_that_filled_the_support_is_kept_divided_by_the_series_own_factor():
    """The night after a day-long shared event (a holiday at 0.6x) adapts from that day
    divided by each series' own factor over it (its value over the same hour's median of
    the three periods before): the support looks like an ordinary day at the series' own
    level, and the lag medians still leave the event out. Series of other signs keep the
    event as it was; an event that began before the support (a change that went on into
    a second night) is kept as it was: the new normal is learned by its second night."""
    from datetime import datetime

    from tsmeta.data.panel import Panel
    from tsmeta.jobs.history import NightHistory

    start = datetime(2026, 1, 1)  # 5 days: three ordinary, the event, the night scored
    shape = 10.0 + np.arange(24)
    day = np.stack([shape, 50.0 + 2 * shape, -shape, shape])  # c: of negative values
    values = np.tile(day, 5).astype(np.float32)
    values[3, 48:] *= 2  # d: its level doubled (a break) the day before the event
    values[:, 72:96] *= np.float32(0.6)
    values[0, 80] *= np.float32(3.0)  # a spike on the event day stays a spike
    mask = np.ones_like(values, dtype=bool)
    panel = Panel(values.copy(), mask.copy(), np.array(["a", "b", "c", "d"]), start, "h")
    history = NightHistory(events=_events(("p24-0", "2026-01-04T00:00", "2026-01-05T00:00")))
    out = history.without_events(panel, "p24-0", k=24, horizon=24, period=24)
    expect = np.tile(day[:2], 5)
    expect[0, 80] *= 3.0
    # the break is the series' own: its support comes back at its new level (the event's
    # 1.2x of its references over the 2x it stood at the day before: 0.6)
    np.testing.assert_allclose(out.values[3, 72:96], 2 * shape, rtol=1e-5)
    assert out.mask[:2].all()  # the support is kept: rescaled, not left out
    np.testing.assert_allclose(out.values[:2, 72:96], expect[:, 72:96], rtol=1e-5)
    assert (out.values[:2, :72] == values[:2, :72]).all()
    assert (out.values[:, 96:] == values[:, 96:]).all()
    assert (out.values[2] == values[2]).all() and out.mask[2].all()  # of another sign: as it was
    # the event began the day before the support: a change that went on, kept as it was
    went_on = NightHistory(events=_events(("p24-0", "2026-01-03T12:00", "2026-01-05T00:00")))
    kept = went_on.without_events(panel, "p24-0", k=24, horizon=24, period=24)
    assert (kept.values == values).all() and kept.mask.all()
    # without a period and under MIN_FACTOR_SERIES series with a factor (a, b, d) the
    # support is kept as it was
    assert (history.without_events(panel, "p24-0", k=24, horizon=24).values == values).all()
    # with enough series for a shared factor (their median), a series whose own factor is
    # far from it (a break of its own on the event's day: 1.6 x 0.6) is divided by the
    # shared one, so that it keeps its break
    many = np.tile(shape * np.arange(1, 7)[:, None], 5).astype(np.float32)
    many[5, 72:] *= 1.6
    many[:, 72:96] *= np.float32(0.6)
    six = Panel(many.copy(), np.ones_like(many, dtype=bool), np.array(list("uvwxyz")), start, "h")
    out = history.without_events(six, "p24-0", k=24, horizon=24, period=24)
    np.testing.assert_allclose(out.values[:, 72:96], many[:, 72:96] / 0.6, rtol=1e-5)


def test_a_weekly_clusters_holiday_support_is_divided_from_the_days_a_night_reads():
    """A weekly cluster adapting from K = 24 reads the day before the support but not that
    day's references a week apart (``steps_read``). The night after a one-day holiday
    (0.6x) must still divide its support by each series' factor, the "before" ratios taken
    from the same day a week earlier: without references the factor was missing and the
    weekly cluster adapted to the holiday's level (its next night forecast at 0.6x)."""
    from datetime import datetime, timedelta

    from tsmeta.data.panel import Panel
    from tsmeta.forecaster import FeatureSpec
    from tsmeta.jobs.history import NightHistory
    from tsmeta.meta.tasks import steps_read

    week = 168
    shape = 10.0 + np.arange(week) % 24 + 5.0 * (np.arange(week) // 24 == 5)  # a busy Saturday
    levels = np.arange(1, 7, dtype=np.float64)[:, None]
    T = 5 * week  # the night scored is the last day; the holiday the day before
    values = (levels * np.tile(shape, 5)).astype(np.float32)
    night0 = T - 24
    values[:, night0 - 24 : night0] *= np.float32(0.6)
    spec = FeatureSpec(period=week, relative_to_lag=True, lag_periods=3)
    read = np.array(sorted(steps_read(spec, 24, 24))) + night0
    mask = np.zeros_like(values, dtype=bool)
    mask[:, read[read >= 0]] = True  # what a night loads: the rest of the window is never read
    # the references of the day before the support are not read
    assert not mask[:, night0 - 48 - week : night0 - 24 - week].any()
    panel = Panel(np.where(mask, values, np.nan).astype(np.float32), mask,
                  np.array(list("uvwxyz")), datetime(2026, 1, 5), "h")  # fmt: skip
    holiday = datetime(2026, 1, 5) + timedelta(hours=night0 - 24)
    history = NightHistory(events=_events(
        ("p168-0", holiday.isoformat(), (holiday + timedelta(days=1)).isoformat())))  # fmt: skip
    out = history.without_events(panel, "p168-0", k=24, horizon=24, period=week)
    support = slice(night0 - 24, night0)
    assert out.mask[:, support].all()
    np.testing.assert_allclose(out.values[:, support], values[:, support] / 0.6, rtol=1e-5)


def test_an_earlier_event_is_read_by_lag_medians_at_the_series_own_level():
    """A holiday before the support (at 0.6x) stays in the window with each series' factor
    divided out, so that the lag medians and the veto read an ordinary day of the series'
    present level (leaving it out made the medians read a period further back: a trending
    series' reference a period stale on the same weekday after it). Series of other signs,
    and clusters without a period, leave it out."""
    from datetime import datetime

    from tsmeta.data.panel import Panel
    from tsmeta.jobs.history import NightHistory

    start = datetime(2026, 1, 1)  # 6 days: three ordinary, the event, one ordinary, the night
    shape = 10.0 + np.arange(24)
    day = np.stack([shape, 50.0 + 2 * shape, -shape])  # c: of negative values
    values = np.tile(day, 6).astype(np.float32)
    values[:, 72:96] *= np.float32(0.6)
    mask = np.ones_like(values, dtype=bool)
    panel = Panel(values.copy(), mask.copy(), np.array(["a", "b", "c"]), start, "h")
    history = NightHistory(events=_events(("p24-0", "2026-01-04T00:00", "2026-01-05T00:00")))
    out = history.without_events(panel, "p24-0", k=24, horizon=24, period=24)
    assert out.mask[:2].all()
    np.testing.assert_allclose(out.values[:2, 72:96], np.tile(day[:2], 6)[:, 72:96], rtol=1e-5)
    assert (out.values[:2, 96:] == values[:2, 96:]).all()
    assert not out.mask[2, 72:96].any() and out.mask[2, 96:].all()  # another sign: left out
    plain = history.without_events(panel, "p24-0", k=24, horizon=24)  # no period: left out
    assert not plain.mask[:, 72:96].any() and plain.mask[:, :72].all()


def test_shared_events_are_remembered_night_to_night_and_forgotten_after_event_days(tmp_path):
    from datetime import date, timedelta

    from tsmeta.config import load_settings
    from tsmeta.jobs.history import EVENT_DAYS, NightHistory, record_events

    settings = load_settings(data_dir=tmp_path)
    first = _events(("p24-0", "2026-01-01T09:00", "2026-01-01T17:00"))
    history = NightHistory()
    history.add_events(first, date(2026, 1, 1))
    history.add_events(first, date(2026, 1, 1))  # the night re-run: once
    history.save(settings, date(2026, 1, 1))
    assert NightHistory.stored(settings, date(2026, 1, 2)).events.equals(history.events)
    assert history.next().events.height == 1
    # the stored path: a night's events written beside the state saved before they were known
    record_events(settings, date(2026, 1, 2), _events(("p168-0", "2026-01-02T00:00",
                                                         "2026-01-02T03:00")))  # fmt: skip
    events = NightHistory.stored(settings, date(2026, 1, 3)).events
    assert events["cluster_id"].to_list() == ["p24-0", "p168-0"]
    later = NightHistory(events=events)
    later.add_events(first.clear(), date(2026, 1, 2) + timedelta(days=EVENT_DAYS))
    assert later.events["cluster_id"].to_list() == ["p168-0"]  # the first has ended too long ago


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


def test_the_combined_tail_gives_back_the_rate_the_own_history_took_away():
    """Residual scales that vary per series-night, which the cluster's tail knows and the
    own history (a long-run scale of 1) does not: the cluster's tail is calibrated, the
    larger of the two flags about 0.65x the configured rate; times the factor read at
    COMBINE_AT it flags the configured rate again. Too few points or series: no factor."""
    from scipy.special import ndtr

    from tsmeta.scoring.history import (
        MIN_COMBINE_POINTS,
        MIN_COMBINE_SERIES,
        CombineCounts,
        combine_factor,
        combined_tail,
    )

    rng = np.random.default_rng(0)
    u = np.exp(rng.normal(0.0, 0.3, (4000, 1)))
    r = u * rng.standard_normal((4000, 24))
    cluster, own = 2 * ndtr(-np.abs(r) / u), 2 * ndtr(-np.abs(r))
    rate = 1e-2
    assert 0.9 < (cluster < rate).mean() / rate < 1.1
    assert (np.fmax(cluster, own) < rate).mean() / rate < 0.7
    counts = CombineCounts.of(cluster, own)
    assert counts.series == 4000 and counts.kept < counts.below
    factor = combine_factor(counts)
    both = combined_tail(cluster, own, factor)
    assert 0.85 < (both < rate).mean() / rate < 1.15
    assert np.allclose(both, factor * np.fmax(cluster, own)) and factor < 1
    # points left out of the counts (a night's flags): anomalies both call rare would make
    # the two tails look more alike than they are on clean points
    flagged = both < rate
    clean = CombineCounts.of(cluster, own, ~flagged)
    assert clean.below == counts.below - flagged.sum() and clean.kept == counts.kept - flagged.sum()
    assert combine_factor(clean) < factor
    # unscored points stay NaN; without history, the cluster's tail unchanged
    cluster[0, 0], own[1, :] = np.nan, np.nan
    out = combined_tail(cluster, own, factor)
    assert np.isnan(out[0, 0]) and (out[1] == cluster[1]).all()
    assert CombineCounts.of(cluster, own).series == 4000 - 1
    # too few points below COMBINE_AT, or one series however long: the larger as it is
    assert combine_factor(CombineCounts(MIN_COMBINE_POINTS - 1, 0.0, 4000)) == 1.0
    one = CombineCounts.of(cluster.reshape(1, -1), own.reshape(1, -1))
    assert one.below >= MIN_COMBINE_POINTS and combine_factor(one) == 1.0
    assert combine_factor(CombineCounts(one.below, one.kept, MIN_COMBINE_SERIES)) < 1.0
    # earlier nights weigh less: a week's memory
    later = counts.after(CombineCounts(0.0, 0.0, 10.0), memory=7.0)
    assert np.isclose(later.below, counts.below * 6 / 7) and later.series == 10.0


def test_the_factor_is_read_at_the_configured_rate_where_two_tails_agree_less_the_rarer():
    """Two tails whose z-scores are jointly normal (correlation 0.7): they agree on a third
    of the 5% tail and on a fifth of the 0.1% tail. The share counted at COMBINE_AT gives
    back half the rate at 1e-3; read at the rate (through the correlation it implies) the
    rate itself; at COMBINE_AT both are the share counted."""
    from scipy.special import ndtr

    from tsmeta.scoring.combine import COMBINE_AT
    from tsmeta.scoring.history import CombineCounts, combine_factor

    rng = np.random.default_rng(5)
    z1 = rng.standard_normal((20000, 24))
    z2 = 0.7 * z1 + math.sqrt(1 - 0.49) * rng.standard_normal(z1.shape)
    cluster, own = 2 * ndtr(-np.abs(z1)), 2 * ndtr(-np.abs(z2))
    counts = CombineCounts.of(cluster, own)
    share = counts.kept / counts.below
    assert combine_factor(counts) == combine_factor(counts, COMBINE_AT) == share
    larger = np.fmax(cluster, own)
    assert (larger * share < 1e-3).mean() / 1e-3 < 0.6
    factor = combine_factor(counts, 1e-3)
    assert factor < share and 0.9 < (larger * factor < 1e-3).mean() / 1e-3 < 1.1
    assert combine_factor(counts, 1e-2) > factor  # the rarer the rate, the smaller
    # a share no better than chance (independent tails: x * x = 1e-4 at x = 1e-2, a
    # factor of 1e-2): never below VETO_FACTOR_MIN
    assert combine_factor(CombineCounts(1000.0, 50.0, 100.0), 1e-4) == 0.05


def test_a_night_flags_with_its_clusters_factor_from_earlier_nights(tmp_path):
    """Through ``NightHistory``: the first night has no counts (no factor: the larger
    probability flags ~0.65x the rate); its counts, saved with the state, give the next
    night its cluster's factor, whichever batches its series come in, and the configured
    rate back. Another cluster's counts are its own."""
    from datetime import date

    from scipy.special import ndtr

    from tsmeta.config import load_settings
    from tsmeta.jobs.history import NightHistory

    settings = load_settings(data_dir=tmp_path)
    rng = np.random.default_rng(3)
    n = 3000
    ids = [f"s{i}" for i in range(n)]
    history = NightHistory()
    for _ in range(2):  # earlier nights: residuals of scale 1 on average
        history.apply(_day(rng.standard_normal((n, 24)), np.full((n, 24), 0.5), ids), 1e-2, "c")
        history = history.next()

    def night() -> tuple[np.ndarray, np.ndarray]:
        u = np.exp(rng.normal(0.0, 0.3, (n, 1)))
        r = u * rng.standard_normal((n, 24))
        return r, 2 * ndtr(-np.abs(r) / u)

    r, cluster = night()
    assert history.factor("c", 1e-2) == 1.0  # the earlier nights' cluster tails were all 0.5
    first = history.apply(_day(r, cluster, ids), 1e-2, "c")
    assert first.flag.mean() / 1e-2 < 0.75
    history.save(settings, date(2026, 1, 2))
    tonight = NightHistory.stored(settings, date(2026, 1, 3))
    assert 0.3 < tonight.factor("c", 1e-2) < 0.95 and tonight.factor("other", 1e-2) == 1.0
    r, cluster = night()
    whole = tonight.apply(_day(r, cluster, ids), 1e-2, "c")
    assert 0.8 < whole.flag.mean() / 1e-2 < 1.2
    assert (whole.flag == (whole.tail < 1e-2)).all()
    assert (whole.flag & (cluster >= 1e-2)).any()  # the factor may flag what the cluster did not
    again = NightHistory.stored(settings, date(2026, 1, 3))
    parts = [again.apply(_day(r[a:a + 7], cluster[a:a + 7], ids[a:a + 7]), 1e-2, "c")
             for a in range(0, n, 7)]  # fmt: skip
    assert (np.vstack([p.tail for p in parts]) == whole.tail).all()  # batches do not matter


def test_a_shared_events_members_are_left_out_of_their_series_own_history():
    """A holiday: every series of a cluster runs far below its forecast for hours, and those
    flagged points are a shared event's members. ``forget`` takes exactly their residuals
    out of the state the next night reads (the series' own scale is not the holiday's);
    the night's other points, and a series not in the event, stay as merged."""
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from tsmeta.jobs.history import HISTORY_CLIP, NightHistory

    rng = np.random.default_rng(11)
    n, ids = 50, [f"s{i:02d}" for i in range(50)]
    first = rng.standard_normal((n, 24))
    history = NightHistory()
    history.apply(_day(first, np.full((n, 24), 0.5), ids), 1e-3, "c")
    history = history.next()
    r = rng.standard_normal((n, 24))
    r[:, 8:18] -= 20.0  # the holiday's hours
    day = history.apply(_day(r, np.where(np.abs(r) > 10, 1e-9, 0.5), ids), 1e-3, "c")
    assert day.flag[:, 8:18].all() and day.flag.sum() == n * 10
    start = datetime(2026, 10, 7, tzinfo=UTC)
    members = pl.DataFrame({"series_id": [s for s in ids[:-1] for _ in range(10)],
                            "ts": [start + timedelta(hours=h) for _ in ids[:-1]
                                   for h in range(8, 18)]})  # fmt: skip
    history.forget(members, start, timedelta(hours=1))
    after = history.state().sort("series_id")
    kept = r.copy()
    kept[:-1, 8:18] = np.nan
    prior = ResidualHistory.empty(n).merged(first)
    expect = prior.merged(prior.clipped(kept, HISTORY_CLIP))  # the night as merged
    assert np.allclose(after["count"].to_numpy(), expect.count)
    assert np.allclose(after["mean"].to_numpy(), expect.mean)
    assert np.allclose(after["m2"].to_numpy(), expect.m2)
    assert after["count"][0] == 38.0 and after["count"][-1] == 48.0


def test_one_nights_anomaly_enters_the_history_clipped_a_change_that_goes_on_as_it_is():
    """A level shift of 30 sds for ten hours would widen a series' own scale fivefold for
    weeks (its later spikes then look ordinary): a night's residuals enter clipped to
    ``HISTORY_CLIP`` of its standard deviations. A series flagged the night before too is a
    change that goes on: its residuals enter as they are, and widen its scale."""
    from tsmeta.jobs.history import HISTORY_CLIP, NightHistory

    rng = np.random.default_rng(5)
    history = NightHistory()
    for _ in range(4):
        history.apply(_day(rng.standard_normal((1, 24)), np.full((1, 24), 0.5), ["a"]), 1e-3)
        history = history.next()
    sd = lambda h: math.sqrt(h.prior["m2"][0] / h.prior["count"][0])  # noqa: E731
    before = sd(history)
    shift = rng.standard_normal((1, 24))
    shift[0, 5:15] += 30.0
    tail = np.full((1, 24), 0.5)
    tail[0, 5:15] = 1e-9
    assert history.apply(_day(shift, tail, ["a"]), 1e-3).flag.sum() == 10
    once = history.next()
    assert sd(once) < before * 1.7  # clipped: at most 4 sds for those ten hours
    assert once.prior["flagged"][0] == 10.0
    wide = ResidualHistory(*(history.prior[c].to_numpy() for c in ("count", "mean", "m2")))
    assert sd(once) == pytest.approx(math.sqrt(
        wide.merged(wide.clipped(shift, HISTORY_CLIP)).m2[0] / 120), rel=1e-9)  # fmt: skip
    once.apply(_day(shift, tail, ["a"]), 1e-3)  # flagged again the next night: as it is
    twice = once.next()
    again = ResidualHistory(*(once.prior[c].to_numpy() for c in ("count", "mean", "m2")))
    assert twice.prior["m2"][0] == pytest.approx(again.merged(shift).m2[0], rel=1e-9)
    assert sd(twice) > 2 * before


def test_points_flagged_the_night_before_are_left_out_of_the_next_nights_support(tmp_path):
    """A spike or a few hours' shift flagged on one night is not what the next night adapts
    from: those points are unobserved in its window (``without_held``). Not held: a series
    flagged on half of the night or more (a break of level: the next night adapts to it),
    one flagged the night before too (a change that goes on), a shared event's members (the
    event windows take those) and the night's own points. The held points are saved with
    the state and read by the next night only."""
    from datetime import UTC, date, datetime, timedelta

    import polars as pl

    from tsmeta.config import load_settings
    from tsmeta.data.panel import Panel
    from tsmeta.jobs.history import NightHistory

    ids = ["a", "b", "c", "d"]
    quiet = np.full((4, 24), 0.5)
    history = NightHistory()
    history.apply(_day(np.zeros((4, 24)), np.where(np.arange(4)[:, None] == 2, 1e-9, quiet),
                       ids), 1e-3)  # "c" flagged all night  # fmt: skip
    history = history.next()
    tail = quiet.copy()
    tail[0, [5, 6, 7]] = 1e-9  # "a": three hours
    tail[1, :12] = 1e-9  # "b": half of the night
    tail[2, 3] = 1e-9  # "c": flagged the night before too
    tail[3, [2, 9]] = 1e-9  # "d": one of them a shared event's member
    day = history.apply(_day(np.ones((4, 24)), tail, ids), 1e-3)
    assert day.flag.sum() == 3 + 12 + 1 + 2
    start = datetime(2026, 1, 2, tzinfo=UTC)
    history.forget(pl.DataFrame({"series_id": ["d"], "ts": [start + timedelta(hours=9)]}),
                   start, timedelta(hours=1))  # fmt: skip
    assert history.held_next().rows() == [("a", 5), ("a", 6), ("a", 7), ("d", 2)]
    settings = load_settings(data_dir=tmp_path)
    history.save(settings, date(2026, 1, 2))
    tonight = NightHistory.stored(settings, date(2026, 1, 3))
    assert tonight.held.rows() == history.held_next().rows()
    assert NightHistory.stored(settings, date(2026, 1, 4)).held.height == 0  # not its night
    values = np.arange(4 * 72, dtype=np.float32).reshape(4, 72)
    panel = Panel(values, np.ones((4, 72), dtype=bool), np.array(ids), datetime(2026, 1, 1), "h")
    out = tonight.without_events(panel, "p24-0", k=24, horizon=24)
    gone = np.zeros((4, 72), dtype=bool)
    gone[0, [29, 30, 31]] = gone[3, 26] = True  # the night before is columns 24..47
    assert (out.mask == ~gone).all() and np.isnan(out.values[gone]).all()
    assert (out.values[~gone] == values[~gone]).all()
    assert panel.mask.all() and not np.isnan(values).any()  # the caller's panel unchanged
    # the nightly job's own batches: the same points, out of the batch's own arrays
    same = tonight.without_events(panel, "p24-0", k=24, horizon=24, in_place=True)
    assert same.values is values and (same.mask == out.mask).all()
    assert np.array_equal(values, out.values, equal_nan=True)


def test_the_event_factor_median_equals_numpy_nanmedian():
    """``event_windows._nanmedian`` (one sort and a count) is numpy's nanmedian, NaN where a
    slice has no number, on both axes the factor reads."""
    import warnings

    from tsmeta.event_windows import _nanmedian

    rng = np.random.default_rng(1)
    for shape, axis in (((3, 40, 24), 0), ((40, 24), 1), ((5, 2), 1)):
        x = rng.normal(size=shape)
        x[rng.random(shape) < 0.4] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expect = np.nanmedian(x, axis=axis)
        np.testing.assert_allclose(_nanmedian(x, axis), expect, equal_nan=True)


def test_the_tail_weight_travels_night_to_night_in_the_saved_state(tmp_path):
    """A bursty series' wild nights are counted night by night through the saved state
    (``NightHistory.save`` / ``stored``), so its own tail turns heavy, a quiet one's stays
    normal; a state saved before the tail weight existed reads as none counted."""
    from datetime import date, timedelta

    from tsmeta.config import load_settings
    from tsmeta.jobs.history import NightHistory

    settings = load_settings(data_dir=str(tmp_path))
    rng = np.random.default_rng(12)
    night = date(2026, 10, 1)
    for d in range(40):
        history = NightHistory.stored(settings, night + timedelta(days=d))
        r = np.vstack([rng.standard_normal(24), rng.standard_t(2.5, 24)])
        history.apply(_day(r, np.full((2, 24), 0.5), ["quiet", "bursty"]), 1e-3, "c")
        history.save(settings, night + timedelta(days=d))
    state = NightHistory.stored(settings, night + timedelta(days=40)).prior.sort("series_id")
    assert state["nights"].to_list() == [40.0 - 9, 40.0 - 9]  # from the tenth: 200 residuals
    assert state["jumps"].to_list() == [40.0 * 22, 40.0 * 22]  # each night's 22 inner points
    h = ResidualHistory(*(state[c].to_numpy() for c in ("count", "mean", "m2", "nights",
                                                         "wild", "last")))  # fmt: skip
    dof = h.tail_dof(24)  # rows: bursty, quiet
    assert np.isfinite(dof[0]) and np.isinf(dof[1])
    old = NightHistory(state.drop("nights", "wild", "last"))
    assert old.prior["nights"].to_list() == [0.0, 0.0]


def test_a_spike_on_a_wandering_series_is_rare_against_its_own_jumps():
    """A series whose residuals wander for hours (AR(1), phi 0.95) has a wide own scale: a
    spike of 4 of its sds is ordinary as a point, but far beyond its own jumps (a point
    minus the mean of its neighbours; ``contrast``); the smaller of the two tails is read as
    one (Sidak), so white-noise series still flag about the configured share at 1e-3."""
    from tsmeta.scoring.history import MIN_JUMPS, contrast, own_tail_and_wild

    rng = np.random.default_rng(14)
    n, steps, phi = 200, 24, 0.95

    def wander(nights):
        x = np.zeros((n, nights * steps))
        e = rng.standard_normal(x.shape) * math.sqrt(1 - phi**2)
        for t in range(1, x.shape[1]):
            x[:, t] = phi * x[:, t - 1] + e[:, t]
        return x + 0.1 * rng.standard_normal(x.shape)

    past = np.vstack([wander(20), rng.standard_normal((n, 20 * steps))])
    hist = _nights(ResidualHistory.empty(2 * n), past.reshape(2 * n, 20, steps).transpose(1, 0, 2))
    assert (hist.jumps >= MIN_JUMPS).all() and (hist.jumps == 20 * (steps - 2)).all()
    night = np.vstack([wander(1), rng.standard_normal((n, steps))])
    spiked = night.copy()
    spiked[:n, 12] += 2.5
    with_jumps, _ = own_tail_and_wild(spiked, hist)
    points_only, _ = own_tail_and_wild(spiked, hist, jumps=False)
    assert np.median(points_only[:n, 12]) > 1e-3 and np.median(with_jumps[:n, 12]) < 1e-6
    c, peak = contrast(spiked)
    assert np.isnan(c[:, [0, -1]]).all() and peak[:n, 12].all()
    fresh = (np.vstack([wander(30), rng.standard_normal((n, 30 * steps))])
             .reshape(2 * n, 30, steps).transpose(1, 0, 2))  # fmt: skip
    rate = {j: np.mean([own_tail_and_wild(x, hist, j)[0] < 1e-3 for x in fresh],
                       axis=(0, 2)).reshape(2, n).mean(axis=1) for j in (True, False)}  # fmt: skip
    assert 0.3e-3 < rate[True][1] < 2e-3, rate  # white noise: about the rate
    # the wandering series' own scale from 20 nights is itself uncertain (its point tail
    # alone flags about 5x the rate); its jumps add no more
    assert rate[True][0] <= rate[False][0], rate
