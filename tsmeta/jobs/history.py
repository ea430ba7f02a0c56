"""Each series' residual history between nights: read before a night, saved after it.

The state after night d is one Parquet file, ``data_dir/history/night=d.parquet`` (a row
per series: ``count``, ``mean``, ``m2`` of its residuals up to d, ``nights``, ``wild``,
``last``, its tail weight's counts, ``min_tail``, the
smallest tail probability of its last scored night, for alerts, and ``flagged``, its flags
that night), and beside it ``events-night=d.parquet``: the shared events of the last
``EVENT_DAYS`` nights (cluster, start, end), whose hours later nights leave out of what
they adapt from, ``combine-night=d.parquet``: per cluster, the counts its factor is read
from (``tsmeta.scoring.history.CombineCounts``, older nights weighted down by
``COMBINE_MEMORY``), and ``held-night=d.parquet``: the points night d flagged that night
d + 1 alone leaves out of what it adapts from (``NightHistory.without_held``). A night
reads the latest files before it, so re-running a night starts from the same state and
replaces its own files (idempotent); files older than ``KEEP_NIGHTS`` before the newest
are removed. A night's shared events' members are left out of the state
(``NightHistory.forget``): the nightly job saves it again once its events are known
(``hold_stored``, ``take_stored``). The numbers and their use are
``tsmeta.scoring.history``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from tsmeta.config import Settings
from tsmeta.data.panel import Panel, freq_timedelta
from tsmeta.detect import ScoredDay
from tsmeta.event_windows import without_steps
from tsmeta.jobs.history_files import (
    COMBINE,
    EVENT_DAYS,
    EVENT_SCHEMA,
    EVENTS,
    HELD,
    KEEP_NIGHTS,
    STATE,
    held_of,
    history_dir,
    latest_before,
    record_events,
    with_events,
    write_night,
)
from tsmeta.scoring.history import (
    CombineCounts,
    ResidualHistory,
    combine_factor,
    combined_tail,
    own_tail_and_wild,
)

__all__ = ["NightHistory", "history_dir", "record_events", "warmup_nights", "KEEP_NIGHTS",
           "EVENT_DAYS", "COMBINE_MEMORY"]  # fmt: skip

# a cluster's factor counts its earlier nights with weights 1, 1 - 1/7, (1 - 1/7)^2, ...: a
# week's memory, so a retrained model's tails take over within days
COMBINE_MEMORY = 7.0
_SCHEMA = {"series_id": pl.String, "count": pl.Float64, "mean": pl.Float64, "m2": pl.Float64,
           "nights": pl.Float64, "wild": pl.Float64, "last": pl.Float64, "jumps": pl.Float64,
           "j2": pl.Float64, "min_tail": pl.Float64, "flagged": pl.Float64}  # fmt: skip
_MOMENTS = ("count", "mean", "m2", "nights", "wild", "last", "jumps", "j2")
# a series never scored; ``flagged``: its points flagged on the state's night (not counting
# shared events' members)
_UNSEEN = {"count": 0.0, "mean": 0.0, "m2": 0.0, "nights": 0.0, "wild": 0.0, "last": 0.0,
           "jumps": 0.0, "j2": 0.0, "min_tail": 1.0, "flagged": 0.0}  # fmt: skip
_HELD_SCHEMA = {"series_id": pl.String, "step": pl.Int64}
# a night's residuals enter a series' history clipped to this many of its standard
# deviations (``ResidualHistory.clipped``), unless the series was flagged the night before
# too: one anomaly (a level shift of 30 noise sds for a day) would otherwise widen a busy
# series' own scale for weeks and hide its later spikes, while a change of regime that
# goes on (flagged two nights running) still widens it (NAB: 46.0 when every night clips)
HISTORY_CLIP: float = Settings.model_fields["history_clip"].default
_COMBINE_SCHEMA = {"cluster_id": pl.String, "below": pl.Float64, "kept": pl.Float64,
                   "series": pl.Float64}  # fmt: skip


def warmup_nights(settings: Settings, night: date, dates: list[date]) -> list[date]:
    """The nights scored first, oldest first, where no history is saved before ``night``:
    the ``settings.history_warmup_nights`` before it that the dataset holds (``dates``)."""
    known = set(dates)
    before = (night - timedelta(days=d) for d in range(settings.history_warmup_nights, 0, -1))
    return [d for d in before if d in known]


# the nightly job's stored history of its latest night, until that night's shared events
# are known (``tsmeta.jobs.night.find_events``: their members are left out of it and it
# is saved again); one night at a time
_PENDING: dict[tuple[str, date], NightHistory] = {}


def hold_stored(settings: Settings, night: date, history: NightHistory) -> None:
    """Keep the stored history a night was scored with until its events are known."""
    _PENDING.clear()
    _PENDING[(str(settings.data_dir), night)] = history


def take_stored(settings: Settings, night: date) -> NightHistory | None:
    """The stored history ``hold_stored`` kept for ``night`` (None if another night's)."""
    return _PENDING.pop((str(settings.data_dir), night), None)


class NightHistory:
    """The residual history a night is scored against, and the state it leaves.

    ``apply`` combines a scored batch's tails with its series' own-history tails
    (``combined_tail``: the larger probability, so a point is flagged only where both call
    it rare, times its cluster's factor from earlier nights, which keeps the configured
    rate; ``cluster``: the batch's), marks alerts
    (a flagged point whose tail is below every tail of its series since the start of the
    night before: one alert a run of anomalous points, unless it grows) and records the
    batch's residuals (safe from several threads at once: it only reads the prior and
    appends); ``state`` is every series' history after the night (series not
    scored tonight carry theirs forward).
    """

    def __init__(self, prior: pl.DataFrame | None = None, events: pl.DataFrame | None = None,
                 combine: pl.DataFrame | None = None, held: pl.DataFrame | None = None,
                 clip: float = HISTORY_CLIP, hold: bool = True,
                 jumps: bool = True) -> None:  # fmt: skip
        for col in _UNSEEN:  # a state saved before alerts, held points, the tail weight, jumps
            if prior is not None and col not in prior.columns:
                prior = prior.with_columns(pl.lit(_UNSEEN[col]).alias(col))
        self.prior = pl.DataFrame(schema=_SCHEMA) if prior is None else prior.cast(_SCHEMA)
        ids = self.prior["series_id"].to_numpy().astype(str)
        self._order = np.argsort(ids, kind="stable")  # series looked up by binary search
        self._sorted = ids[self._order]
        self._cols = {c: self.prior[c].to_numpy() for c in _UNSEEN}
        self._parts: list[pl.DataFrame] = []
        # shared events of earlier nights (cluster_id, start_ts, end_ts)
        self.events = pl.DataFrame(schema=EVENT_SCHEMA) if events is None else (
            events.select(list(EVENT_SCHEMA)).cast(EVENT_SCHEMA))  # fmt: skip
        # each cluster's combination counts of earlier nights, its factor, and tonight's counts
        self.combine = {} if combine is None else {
            r["cluster_id"]: CombineCounts(r["below"], r["kept"], r["series"])
            for r in combine.iter_rows(named=True)}  # fmt: skip
        self._factors: dict[tuple[str, float], float] = {}  # (cluster, rate): its factor
        self._tonight: list[tuple[str, CombineCounts]] = []
        # tonight's flagged points' residuals (series_id, step, residual: as merged), and
        # those of a shared event's members, left out of the state (``forget``)
        self._flagged: list[pl.DataFrame] = []
        self._forgotten: pl.DataFrame | None = None
        self._members: pl.DataFrame | None = None  # (series_id, step) of those forgotten
        self._night_steps = 0  # tonight's points a series (``apply``)
        # the points flagged on the night before, of series not flagged on the one before
        # it (series_id, step in that night): left out of what tonight adapts from
        self.held = (pl.DataFrame(schema=_HELD_SCHEMA) if held is None or not hold
                     else held.select(list(_HELD_SCHEMA)).cast(_HELD_SCHEMA))  # fmt: skip
        self.clip, self.hold = clip, hold  # ``Settings.history_clip``, ``.hold_flagged``
        self.jumps = jumps  # own jumps judged too (not causal: they read the next point)

    @classmethod
    def stored(cls, settings: Settings, night: date) -> NightHistory:
        """The state saved after the latest night before ``night`` (empty if none)."""
        return cls(latest_before(settings, night, STATE), latest_before(settings, night, EVENTS),
                   latest_before(settings, night, COMBINE), held_of(settings, night),
                   settings.history_clip, settings.hold_flagged, not settings.causal)  # fmt: skip

    def without_events(self, panel: Panel, cluster_id: str, k: int, horizon: int,
                       holidays: Collection[date] = (), period: int = 0,
                       in_place: bool = False) -> Panel:  # fmt: skip
        """The panel with the steps of the cluster's earlier shared events, and of the
        known ``holidays`` (whole UTC days), unobserved before its last ``horizon`` steps
        (the night), so that a holiday or an outage is not what its series adapt from nor
        what their lag medians, spread and veto read; where the cluster has a ``period``, a
        support they would mostly empty and the events before the support are kept with
        each series' factor over the event divided out (``tsmeta.event_windows``: the
        holiday's 0.6x comes back as an ordinary day at the series' own level).
        ``in_place``: the held points are taken out of ``panel``'s own arrays (a batch the
        caller owns), not out of copies."""
        panel = self.without_held(panel, horizon, in_place)
        night0 = panel.mask.shape[1] - horizon
        step = freq_timedelta(panel.freq)
        drop = np.zeros(panel.mask.shape[1], dtype=bool)
        rows = self.events.filter(pl.col("cluster_id") == cluster_id)
        days = [datetime(d.year, d.month, d.day) for d in holidays]
        spans = [(a.replace(tzinfo=None), b.replace(tzinfo=None))
                 for a, b in rows.select("start_ts", "end_ts").iter_rows()]  # fmt: skip
        for start, end in spans + [(d, d + timedelta(days=1)) for d in days]:
            a = max(0, -(-(start - panel.start) // step))
            b = min(night0, -(-(end - panel.start) // step))
            if a < b:
                drop[a:b] = True
        if not drop.any():
            return panel
        values, mask = without_steps(panel.values, panel.mask, drop, k, horizon, period)
        return Panel(values, mask, panel.series_ids, panel.start, panel.freq)

    def without_held(self, panel: Panel, horizon: int, in_place: bool = False) -> Panel:
        """``panel`` (its last ``horizon`` steps tonight's) with the points ``held`` (flagged
        the night before, whose series was not flagged on the night before that)
        unobserved: a day that lost its shape, a level shift or a spike is not what the
        next night adapts from, nor what its lag medians and veto read (under half of a
        support left: the period before it, ``tasks.support_shift``). A change that is
        flagged on two nights running is kept from the second: the new normal is learned.
        ``in_place``: out of ``panel``'s own arrays (a batch the caller owns)."""
        if not self.held.height:
            return panel
        at = pl.DataFrame({"series_id": panel.series_ids.astype(str),
                           "_row": np.arange(len(panel.series_ids))})  # fmt: skip
        hit = at.join(self.held, on="series_id", how="inner")
        if not hit.height:
            return panel
        rows = hit["_row"].to_numpy()
        cols = panel.mask.shape[1] - 2 * horizon + hit["step"].to_numpy()
        ok = (cols >= 0) & (cols < panel.mask.shape[1] - horizon)
        if not in_place:  # copies: a few points change
            panel = Panel(panel.values.copy(), panel.mask.copy(), panel.series_ids, panel.start,
                          panel.freq)  # fmt: skip
        panel.mask[rows[ok], cols[ok]] = False
        panel.values[rows[ok], cols[ok]] = np.nan
        return panel

    def add_events(self, shared: pl.DataFrame, night: date) -> None:
        """Remember a night's shared events (``tsmeta.events.shared_events``'s frame) for
        the nights after it; those ending more than ``EVENT_DAYS`` before it are dropped."""
        self.events = with_events(self.events, shared, night)

    def factor(self, cluster: str, rate: float) -> float:
        """The cluster's factor tonight at the configured rate ``rate`` (``combine_factor``
        of its earlier nights' counts; 1 for a cluster without them)."""
        key = (cluster, float(rate))
        if key not in self._factors:  # several batches' threads may compute it: the same
            counts = self.combine.get(cluster)
            self._factors[key] = 1.0 if counts is None else combine_factor(counts, rate)
        return self._factors[key]

    def apply(self, day: ScoredDay, false_alarm_rate: float, cluster: str = "") -> ScoredDay:
        ids = day.series_ids.astype(str)
        found = self._lookup(ids)
        history = ResidualHistory(*(found[c] for c in _MOMENTS))
        observed = day.observed & day.scored[:, None]
        residual = np.where(observed, day.residual, np.nan)  # the residuals' precision
        if day.level is not None:  # compared at one level (noise that grows with it)
            residual /= day.level
        own, wild = own_tail_and_wild(residual, history, self.jumps)  # wild: before the clip
        # not scored: NaN
        tail = combined_tail(day.tail, own, self.factor(cluster, false_alarm_rate))
        flag = tail < false_alarm_rate
        self._tonight.append((cluster, CombineCounts.of(day.tail, own, ~flag)))
        lowest = np.minimum.accumulate(np.nan_to_num(tail, nan=1.0), axis=1)  # so far tonight
        before = np.minimum(np.concatenate([np.ones((len(ids), 1)), lowest[:, :-1]], axis=1),
                            found["min_tail"][:, None])  # fmt: skip
        fresh = found["flagged"] == 0  # not flagged the night before: clipped as merged
        if self.clip:
            residual = np.where(fresh[:, None], history.clipped(residual, self.clip), residual)
        after = history.merged(residual, wild)
        flagged = flag & ~np.isnan(residual)
        rows, steps = np.nonzero(flagged)
        if rows.size:
            self._flagged.append(pl.DataFrame({
                "series_id": ids[rows], "step": steps.astype(np.int64),
                "residual": residual[rows, steps].astype(np.float64),
                "first": fresh[rows]}))  # fmt: skip
        self._night_steps = residual.shape[1]
        self._parts.append(pl.DataFrame({"series_id": ids,
                                         **{c: getattr(after, c) for c in _MOMENTS},
                                         "min_tail": lowest[:, -1],
                                         "flagged": flagged.sum(1).astype(np.float64)},
                                        schema=_SCHEMA))  # fmt: skip
        return replace(day, tail=tail, flag=flag, alert=flag & (tail < before))

    @property
    def empty(self) -> bool:
        """No series has a history yet (nothing saved before the night)."""
        return self.prior.height == 0

    def _lookup(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Each state column of each id (``_UNSEEN``'s values for a series never scored)."""
        if not self._sorted.size:
            return {c: np.full(len(ids), v) for c, v in _UNSEEN.items()}
        at = np.minimum(np.searchsorted(self._sorted, ids), self._sorted.size - 1)
        known, pick = self._sorted[at] == ids, self._order[at]
        return {c: np.where(known, col[pick], _UNSEEN[c]) for c, col in self._cols.items()}

    def forget(self, members: pl.DataFrame, night_start: datetime, step: timedelta) -> None:
        """Leave tonight's flagged points ``members`` (series_id, ts: a night's shared
        events' members, ``tsmeta.events``) out of their series' histories: a holiday or an
        outage is the cluster's, not what its series' own residuals look like (a series'
        own anomalies stay: a real change of level is learned from them)."""
        if not self._flagged or not members.height:
            return
        start = night_start.replace(tzinfo=None)
        since = (pl.col("ts").dt.replace_time_zone(None) - start).dt.total_microseconds()
        at = members.select(pl.col("series_id").cast(pl.String),
                            (since // (step // timedelta(microseconds=1))).alias("step"))  # fmt: skip
        gone = pl.concat(self._flagged).join(at, on=["series_id", "step"], how="semi")
        self._members = gone.select(list(_HELD_SCHEMA))
        self._forgotten = gone.group_by("series_id").agg(
            pl.len().cast(pl.Float64).alias("n_b"), pl.col("residual").mean().alias("mean_b"),
            ((pl.col("residual") - pl.col("residual").mean()) ** 2).sum().alias("m2_b"))  # fmt: skip

    def state(self) -> pl.DataFrame:
        """Every series' history after the night (without the residuals ``forget`` left
        out), sorted by series id (batches may finish in any order; the file is the same
        whichever did)."""
        tonight = pl.concat(self._parts) if self._parts else pl.DataFrame(schema=_SCHEMA)
        if self._forgotten is not None and self._forgotten.height:
            tonight = _less(tonight, self._forgotten)
        carried = self.prior.join(tonight.select("series_id"), on="series_id",
                                  how="anti").with_columns(flagged=pl.lit(0.0))  # fmt: skip
        both = pl.concat([tonight, carried]).unique("series_id", keep="first")
        return both.sort("series_id")

    def combine_state(self) -> pl.DataFrame:
        """Every cluster's combination counts after the night (clusters not scored tonight
        carry theirs), sorted by cluster."""
        tonight: dict[str, CombineCounts] = {}
        for cid, counts in list(self._tonight):
            tonight[cid] = tonight.get(cid, CombineCounts()) + counts
        after = dict(self.combine)
        for cid, counts in tonight.items():
            after[cid] = after.get(cid, CombineCounts()).after(counts, COMBINE_MEMORY)
        rows = [{"cluster_id": c, "below": v.below, "kept": v.kept, "series": v.series}
                for c, v in sorted(after.items())]  # fmt: skip
        return pl.DataFrame(rows, schema=_COMBINE_SCHEMA)

    def held_next(self) -> pl.DataFrame:
        """The points the next night leaves out of its supports (``without_held``):
        tonight's flags of series not flagged the night before, but for shared events'."""
        if not self._flagged or not self.hold:
            return pl.DataFrame(schema=_HELD_SCHEMA)
        held = (pl.concat(self._flagged)
                .filter(pl.col("first") & (2 * pl.len().over("series_id") < self._night_steps))
                .select(list(_HELD_SCHEMA)))  # fmt: skip
        if self._members is not None:
            held = held.join(self._members, on=list(_HELD_SCHEMA), how="anti")
        return held.sort(list(_HELD_SCHEMA))

    def next(self) -> NightHistory:
        """The history the next night starts from (replays carry it night to night)."""
        return NightHistory(self.state(), self.events, self.combine_state(), self.held_next(),
                            self.clip, self.hold, self.jumps)  # fmt: skip

    def save(self, settings: Settings, night: date) -> Path:
        """Write the state after ``night`` (replacing its file) and drop old states."""
        return write_night(
            settings,
            night,
            {
                EVENTS: self.events,
                COMBINE: self.combine_state(),
                HELD: self.held_next(),
                STATE: self.state(),
            },
        )


def _less(state: pl.DataFrame, gone: pl.DataFrame) -> pl.DataFrame:
    """``state``'s histories without the residuals summarised in ``gone`` (series_id, n_b,
    mean_b, m2_b; ``ResidualHistory.less``)."""
    both = state.join(gone, on="series_id", how="left").fill_null(0.0)
    both = both.with_columns(pl.col("flagged") - pl.col("n_b"))  # members are not its own
    less = ResidualHistory(*(both[c].to_numpy() for c in _MOMENTS)).less(
        *(both[c].to_numpy() for c in ("n_b", "mean_b", "m2_b")))  # fmt: skip
    return both.with_columns(pl.Series("count", less.count), pl.Series("mean", less.mean),
                             pl.Series("m2", less.m2)).select(list(_SCHEMA))  # fmt: skip
