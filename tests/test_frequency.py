from datetime import timedelta

import pytest

from tsmeta.config import load_settings
from tsmeta.frequency import (
    SUPPORTED_STEPS,
    freq_timedelta,
    normalise_freq,
    pandas_alias,
    polars_every,
    steps_per_day,
)


@pytest.mark.parametrize(
    "text,code,spd",
    [
        ("1min", "1min", 1440), ("1m", "1min", 1440), ("T", "1min", 1440),
        ("5m", "5min", 288), ("5min", "5min", 288), ("5T", "5min", 288), (" 5 min ", "5min", 288),
        ("10min", "10min", 144), ("15min", "15min", 96), ("30min", "30min", 48),
        ("h", "h", 24), ("H", "h", 24), ("1h", "h", 24), ("60min", "h", 24), ("hourly", "h", 24),
        ("2h", "2h", 12), ("d", "d", 1), ("D", "d", 1), ("1d", "d", 1), ("daily", "d", 1),
        ("1440min", "d", 1),
    ],
)  # fmt: skip
def test_spellings(text, code, spd):
    assert normalise_freq(text) == code
    assert steps_per_day(text) == spd
    assert freq_timedelta(text) * spd == timedelta(days=1)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("7min", "does not divide a day evenly"),
        ("90s", "shorter than a minute"),
        ("1W", "longer than a day"),
        ("M", "longer than a day"),
        ("2d", "longer than a day"),
        ("0min", "positive number"),
        ("fortnightly", "unknown unit"),
        ("5 5min", "not understood"),
    ],
)
def test_rejected_with_the_reason(text, needle):
    with pytest.raises(ValueError, match=needle):
        normalise_freq(text)


def test_library_spellings_round_trip():
    import pandas as pd
    import polars as pl

    for minutes in SUPPORTED_STEPS:
        code = normalise_freq(f"{minutes}min")
        assert pd.Timedelta(pd.tseries.frequencies.to_offset(pandas_alias(code))) == freq_timedelta(
            code
        )
        start = pl.datetime(2026, 1, 1)
        got = pl.select(pl.datetime_range(start, start + pl.duration(days=1), polars_every(code),
                                          closed="left")).height  # fmt: skip
        assert got == steps_per_day(code)


def test_settings_derive_from_the_step():
    s = load_settings(freq="5min")
    assert (s.freq, s.k, s.horizon, s.steps_per_day) == ("5min", 288, 288, 288)
    assert s.candidate_periods == [288, 2016] and s.period_default == 288
    s = load_settings(freq="1h")
    assert (s.freq, s.k, s.candidate_periods) == ("h", 24, [24, 168])
    s = load_settings(freq="D")
    assert (s.freq, s.k, s.horizon, s.candidate_periods, s.period_default) == ("d", 28, 1, [7], 7)
