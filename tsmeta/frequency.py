"""Frequencies: any fixed step from one minute to one day that divides a day evenly.

A frequency has one canonical code: ``"d"`` (a day), ``"h"`` (an hour), ``"<n>h"``
(several hours) or ``"<n>min"`` (minutes). It is parsed from the spellings polars and
pandas users write (``5m``, ``5min``, ``5T``, ``15min``, ``1h``, ``H``, ``1d``, ``D``,
``hourly``, ``daily``). Everything that depends on the step (steps per day, candidate
periods, the grid of timestamps) derives it from here.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = [
    "normalise_freq",
    "freq_minutes",
    "freq_timedelta",
    "steps_per_day",
    "polars_every",
    "pandas_alias",
    "SUPPORTED_STEPS",
]

MINUTES_PER_DAY = 1440
# every step, in minutes, that divides a day evenly
SUPPORTED_STEPS = tuple(m for m in range(1, MINUTES_PER_DAY + 1) if MINUTES_PER_DAY % m == 0)

_WORDS = {"hourly": 60, "daily": MINUTES_PER_DAY, "minutely": 1}
_UNITS = {
    "m": 1, "min": 1, "mins": 1, "minute": 1, "minutes": 1, "t": 1,
    "h": 60, "hr": 60, "hour": 60, "hours": 60,
    "d": MINUTES_PER_DAY, "day": MINUTES_PER_DAY, "days": MINUTES_PER_DAY,
}  # fmt: skip
_PATTERN = re.compile(r"^\s*(\d+)?\s*([a-zA-Z]+)\s*$")
_EXAMPLES = "'1min', '5min' (or '5m'), '10min', '15min', '30min', 'h' (or '1h'), 'd' (or '1d')"


def _code(minutes: int) -> str:
    if minutes == MINUTES_PER_DAY:
        return "d"
    if minutes == 60:
        return "h"
    if minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}min"


def _parse_minutes(freq: str) -> int:
    text = str(freq).strip()
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"frequency {freq!r} is not understood: expected e.g. {_EXAMPLES}")
    count, unit = int(match.group(1) or 1), match.group(2)
    if unit in ("M", "mo", "MS", "ME", "Y", "y", "W", "w", "wk"):
        raise ValueError(
            f"frequency {freq!r} is longer than a day: tsmeta steps are 1 minute to 1 day "
            f"(e.g. {_EXAMPLES})"
        )
    if unit.lower() in ("s", "sec", "ms", "us", "ns"):
        raise ValueError(
            f"frequency {freq!r} is shorter than a minute: aggregate the data to at least "
            f"one minute (e.g. {_EXAMPLES})"
        )
    if unit.lower() not in _UNITS:
        raise ValueError(
            f"frequency {freq!r} has an unknown unit {unit!r}: expected e.g. {_EXAMPLES}"
        )
    if count < 1:
        raise ValueError(f"frequency {freq!r} needs a positive number of steps")
    return count * _UNITS[unit.lower()]


def normalise_freq(freq: str) -> str:
    """The canonical code of a frequency, or a ValueError naming what is accepted."""
    minutes = _parse_minutes(freq)
    if minutes > MINUTES_PER_DAY:
        raise ValueError(
            f"frequency {freq!r} is longer than a day: tsmeta steps are 1 minute to 1 day"
        )
    if MINUTES_PER_DAY % minutes:
        near = [m for m in SUPPORTED_STEPS if abs(m - minutes) <= max(2, minutes // 4)]
        raise ValueError(
            f"frequency {freq!r} ({minutes} minutes) does not divide a day evenly, so its "
            f"steps would not fall on the same times each day: choose a divisor of 1440 "
            f"minutes, e.g. {', '.join(_code(m) for m in near) or _EXAMPLES}"
        )
    return _code(minutes)


def freq_minutes(freq: str) -> int:
    return _parse_minutes(normalise_freq(freq))


def freq_timedelta(freq: str) -> timedelta:
    return timedelta(minutes=freq_minutes(freq))


def steps_per_day(freq: str) -> int:
    return MINUTES_PER_DAY // freq_minutes(freq)


def polars_every(freq: str) -> str:
    """The frequency as a polars duration string (``5m``, ``1h``, ``1d``)."""
    minutes = freq_minutes(freq)
    if minutes == MINUTES_PER_DAY:
        return "1d"
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def pandas_alias(freq: str) -> str:
    """The frequency as a pandas offset alias (``5min``, ``h``, ``D``)."""
    minutes = freq_minutes(freq)
    if minutes == MINUTES_PER_DAY:
        return "D"
    if minutes % 60 == 0:
        return "h" if minutes == 60 else f"{minutes // 60}h"
    return f"{minutes}min"
