"""One night end to end: score it, find its shared events, write both; replays of many."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import polars as pl

from tsmeta import progress
from tsmeta.config import Settings
from tsmeta.data.panel import freq_timedelta
from tsmeta.events import shared_events
from tsmeta.jobs.common import engine_for, log, night_bounds, require_night_data
from tsmeta.jobs.history import NightHistory, record_events, take_stored
from tsmeta.jobs.score import history_before, score_night
from tsmeta.store.writes import replace_night


def run_night(
    settings: Settings, night: date, run_id: str, write: bool = True, keep: str = "flagged",
    history: NightHistory | None = None,
) -> tuple[pl.DataFrame, dict]:  # fmt: skip
    """Score one night, find its shared events and (``write``) replace its anomalies and
    events in the database.

    The nightly flow's body; ``keep`` as in :func:`score_night`; the rows gain an
    ``event_id`` (the shared event a flagged point belongs to, ``tsmeta.events``). Only
    flagged points are written either way. Re-running a night replaces its rows
    (idempotent). ``history``: as in :func:`score_night`; given, it is saved here with
    ``write`` (and nothing is saved without).
    """
    frame, stats = score_night(settings, night, run_id, keep, history)
    flagged = frame.filter(pl.col("flag")).drop("flag") if "flag" in frame.columns else frame
    shared, flagged = find_events(settings, night, flagged, stats, history)
    if write:
        require_night_data(settings, night, stats)
        stats["written"] = write_night(settings, flagged, night, run_id, stats["scored_clusters"],
                                       shared)  # fmt: skip
        if history is not None:
            history.save(settings, night)
    if keep == "all" and frame.height:
        frame = frame.join(flagged.select("series_id", "ts", "event_id"), on=["series_id", "ts"],
                           how="left")  # fmt: skip
        return frame, stats
    return flagged, stats


def find_events(
    settings: Settings, night: date, flagged: pl.DataFrame, stats: dict,
    history: NightHistory | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:  # fmt: skip
    """(shared events, the flagged rows with their ``event_id``) of a night scored by
    :func:`score_night` (``tsmeta.events.shared_events`` with the settings' thresholds and
    holiday calendar); counts them into ``stats``. The events are remembered for the
    nights after it (their steps are not what those adapt from): in ``history`` where a
    replay carries one, else beside the stored residual history (``own_history``)."""
    scored = {cid: c.get("scored", 0) for cid, c in stats["clusters"].items()}
    shared, flagged = shared_events(flagged, scored, freq_timedelta(settings.freq),
                                    settings.event_min_share, settings.event_min_series,
                                    settings.holidays)  # fmt: skip
    # the events' members are left out of their series' own histories
    members = flagged.filter(pl.col("event_id").is_not_null()).select("series_id", "ts")
    start, step = night_bounds(night)[0], freq_timedelta(settings.freq)
    if history is not None:
        history.add_events(shared, night)
        history.forget(members, start, step)
    elif settings.own_history:
        stored = take_stored(settings, night)
        if stored is not None and members.height:  # its state saved again without them
            stored.add_events(shared, night)
            stored.forget(members, start, step)
            stored.save(settings, night)
        else:  # no members: the state score_night saved stands
            record_events(settings, night, shared)
    stats["events"] = shared.height
    stats["event_points"] = int(shared.get_column("n_points").sum()) if shared.height else 0
    if shared.height:
        log.info("night %s: %d shared event(s) holding %d flagged points", night, shared.height,
                 stats["event_points"])  # fmt: skip
    return shared, flagged


def replay(
    settings: Settings, first: date, last: date, run_id: str, write: bool = False,
    keep: str = "all",
) -> Iterator[tuple[date, pl.DataFrame, dict]]:  # fmt: skip
    """Score every night of ``first..last`` (inclusive), one at a time, with today's models.

    Yields (night, rows, stats) per night: every scored point by default (evaluation), or
    only the flagged ones (``keep="flagged"``). With ``write`` each night's anomalies are
    replaced in the database as the nightly job would (backfills). Memory is one night.
    Each series' residual history starts from the state saved before ``first`` (built
    where none is: ``score.history_before``) and is carried from night to night (saved
    only with ``write``).
    """
    if last < first:
        raise ValueError(f"empty date range: {last} is before {first}; give first <= last")
    history = history_before(settings, first) if settings.own_history else None
    night = first
    while night <= last:
        frame, stats = run_night(settings, night, run_id, write, keep, history)
        yield night, frame, stats
        history = history.next() if history is not None else None
        night += timedelta(days=1)


def write_night(
    settings: Settings, frame: pl.DataFrame, night: date, run_id: str, clusters: list[str],
    shared: pl.DataFrame | None = None,
) -> int:  # fmt: skip
    """Replace the night's anomalies and shared events of the given clusters with
    ``frame`` and ``shared`` (idempotent)."""
    night_start, night_end = night_bounds(night)
    with progress.bar("write", total=frame.height, unit="rows") as pbar:
        return replace_night(engine_for(settings), frame, night_start, night_end, run_id, clusters,
                             progress=pbar.update, shared=shared)  # fmt: skip


def read_night(settings: Settings, night: date) -> pl.DataFrame:
    """The stored anomalies of a night, highest score first."""
    from tsmeta.store.queries import query_anomalies

    return query_anomalies(engine_for(settings), night, night)
