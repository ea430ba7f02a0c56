"""Where a night's residual history lives between nights: its files in
``data_dir/history`` (the layout: ``tsmeta.jobs.history``'s docstring).

Each kind of file is named by its night (``night=d``, ``events-night=d``,
``combine-night=d``, ``held-night=d``); a night reads the latest of each kind before it,
writes its own through a temporary file (never half-written) and removes those older than
``KEEP_NIGHTS`` before the newest.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from tsmeta.config import Settings

__all__ = ["history_dir", "latest_before", "held_of", "write_night", "record_events",
           "with_events", "KEEP_NIGHTS", "EVENT_DAYS", "EVENT_SCHEMA", "STATE", "EVENTS",
           "COMBINE", "HELD"]  # fmt: skip

KEEP_NIGHTS = 14  # states kept before the newest: re-runs and backfills of recent nights
# shared events are remembered this long: longer than any window a night reads (a weekly
# cluster's lag medians reach 3 weeks back, its K = one period another week)
EVENT_DAYS = 35
EVENT_SCHEMA = {"cluster_id": pl.String, "start_ts": pl.Datetime("us", "UTC"),
                "end_ts": pl.Datetime("us", "UTC")}  # fmt: skip
# the kinds of file, by their names' prefix: the residual state, the shared events, the
# clusters' combination counts, the points the next night leaves out
STATE, EVENTS, COMBINE, HELD = "", "events-", "combine-", "held-"
_KINDS = (STATE, EVENTS, COMBINE, HELD)


def history_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "history"


def _stored(folder: Path, kind: str) -> dict[date, Path]:
    if not folder.is_dir():
        return {}
    pattern = re.compile(re.escape(kind) + r"night=(\d{4}-\d{2}-\d{2})\.parquet")
    found = (pattern.fullmatch(p.name) for p in folder.iterdir())
    return {date.fromisoformat(m.group(1)): folder / m.group(0) for m in found if m}


def latest_before(settings: Settings, night: date, kind: str) -> pl.DataFrame | None:
    """The file of ``kind`` saved with the latest night before ``night`` (None if none)."""
    before = {d: p for d, p in _stored(history_dir(settings), kind).items() if d < night}
    return pl.read_parquet(before[max(before)]) if before else None


def held_of(settings: Settings, night: date) -> pl.DataFrame | None:
    """The points the night before ``night`` left for it to leave out (that night's only)."""
    path = _stored(history_dir(settings), HELD).get(night - timedelta(days=1))
    return None if path is None else pl.read_parquet(path)


def _write(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)  # never half-written


def write_night(settings: Settings, night: date, frames: dict[str, pl.DataFrame]) -> Path:
    """Write a night's files (``frames`` by kind; the state last, replacing its file) and
    drop those older than ``KEEP_NIGHTS`` before the newest state; the state's path."""
    folder = history_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in sorted(frames, key=lambda k: k == STATE):
        _write(frames[kind], folder / f"{kind}night={night.isoformat()}.parquet")
    newest = max(_stored(folder, STATE))
    for kind in _KINDS:
        for d, p in _stored(folder, kind).items():
            if d < newest - timedelta(days=KEEP_NIGHTS):
                p.unlink(missing_ok=True)
    return folder / f"night={night.isoformat()}.parquet"


def with_events(events: pl.DataFrame | None, shared: pl.DataFrame, night: date) -> pl.DataFrame:
    """Earlier ``events`` and a night's ``shared`` ones (``tsmeta.events.shared_events``'s
    frame), each once, without those that ended more than ``EVENT_DAYS`` before it."""
    horizon = datetime(night.year, night.month, night.day, tzinfo=UTC) - timedelta(EVENT_DAYS)
    frames = [f.select(list(EVENT_SCHEMA)).cast(EVENT_SCHEMA)
              for f in (events, shared) if f is not None]  # fmt: skip
    return pl.concat(frames).unique(maintain_order=True).filter(pl.col("end_ts") > horizon)


def record_events(settings: Settings, night: date, shared: pl.DataFrame) -> None:
    """Save a night's shared events with those of earlier nights (a night scored with
    the stored history: ``NightHistory.save`` wrote its state before its events were
    known)."""
    history_dir(settings).mkdir(parents=True, exist_ok=True)
    _write(with_events(latest_before(settings, night, EVENTS), shared, night),
           history_dir(settings) / f"{EVENTS}night={night.isoformat()}.parquet")  # fmt: skip
