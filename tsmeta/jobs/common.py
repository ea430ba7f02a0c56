"""What every step needs: the database engine, the dataset's days, which night a run
scores and whether its data has arrived."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from tsmeta.config import Settings
from tsmeta.data.io import dataset_dates
from tsmeta.store.schema import create_engine, create_schema

log = logging.getLogger("tsmeta")

_ENGINES: dict[str, object] = {}


def engine_for(settings: Settings):  # noqa: ANN201 - sqlalchemy Engine
    """One engine (one connection pool) per database URL and process, schema migrated."""
    engine = _ENGINES.get(settings.database_url)
    if engine is None:
        engine = _ENGINES[settings.database_url] = create_engine(settings.database_url)
    create_schema(engine)  # one query when already at head
    return engine


def latest_date(settings: Settings) -> date:
    """Last date present in the dataset (the default night for ad hoc runs)."""
    dates = dataset_dates(settings.dataset_path)
    if not dates:
        raise FileNotFoundError(f"dataset {settings.dataset_path} holds no date=YYYY-MM-DD folders")
    return dates[-1]


class NightDataMissing(RuntimeError):
    """The night's data has not arrived (or only part of it): nothing was written."""


def default_night(settings: Settings) -> date:
    """The night a run without one scores: today in ``settings.timezone`` minus
    ``settings.night_lag_days`` (1: yesterday)."""
    from zoneinfo import ZoneInfo

    return (
        datetime.now(ZoneInfo(settings.timezone)) - timedelta(days=settings.night_lag_days)
    ).date()


def _require_night_partition(settings: Settings, night: date) -> None:
    """Fail before reading anything when the dataset has no partition for ``night``."""
    dates = dataset_dates(settings.dataset_path)
    if night in dates:
        return
    where = f"its days are {dates[0]}..{dates[-1]}" if dates else "it holds no days"
    raise NightDataMissing(
        f"no data for night {night} in {settings.dataset_path} ({where}): nothing was "
        "scored or written; load the day's data and run the night again, or give an earlier "
        "night (a schedule's default night is today minus TSMETA_NIGHT_LAG_DAYS)"
    )


def require_night_data(settings: Settings, night: date, stats: dict) -> None:
    """Raise :class:`NightDataMissing` when fewer than ``settings.min_series_share`` of the
    profiled series have a point in the night (``stats`` from :func:`score_night`)."""
    expected, present = stats["series"], stats["series_with_data"]
    if present == 0 or present < settings.min_series_share * expected:
        raise NightDataMissing(
            f"night {night} is incomplete: {present:,} of {expected:,} profiled series have "
            f"data in it, below TSMETA_MIN_SERIES_SHARE={settings.min_series_share:g}; nothing "
            "was written; run the night again once its data has arrived"
        )


def night_bounds(night: date) -> tuple[datetime, datetime]:
    start = datetime(night.year, night.month, night.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _window_start(settings: Settings, end: date, days: int) -> date:
    """``end - days``, clamped to the first date the dataset holds."""
    first = dataset_dates(settings.dataset_path)[0]
    start = end - timedelta(days=days)
    if start < first:
        log.warning(
            "only %d day(s) of data before %s (asked for %d)", (end - first).days, end, days
        )
        start = first
    return start
