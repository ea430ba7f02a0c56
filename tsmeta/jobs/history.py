"""Each series' residual history between nights: read before a night, saved after it.

The state after night d is one Parquet file, ``data_dir/history/night=d.parquet`` (a row
per series: ``count``, ``mean``, ``m2`` of its residuals up to d, and ``min_tail``, the
smallest tail probability of its last scored night, for alerts). A night reads the
latest file before it, so re-running a night starts from the same state and replaces its
own file (idempotent); files older than ``KEEP_NIGHTS`` before the newest are removed.
The numbers and their use are ``tsmeta.scoring.history``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from tsmeta.config import Settings
from tsmeta.detect import ScoredDay
from tsmeta.scoring.history import ResidualHistory, own_tail

__all__ = ["NightHistory", "history_dir", "warmup_nights", "KEEP_NIGHTS"]

KEEP_NIGHTS = 14  # states kept before the newest: re-runs and backfills of recent nights
_SCHEMA = {"series_id": pl.String, "count": pl.Float64, "mean": pl.Float64, "m2": pl.Float64,
           "min_tail": pl.Float64}  # fmt: skip
_UNSEEN = {"count": 0.0, "mean": 0.0, "m2": 0.0, "min_tail": 1.0}  # a series never scored
_FILE = re.compile(r"night=(\d{4}-\d{2}-\d{2})\.parquet")


def history_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "history"


def warmup_nights(settings: Settings, night: date, dates: list[date]) -> list[date]:
    """The nights scored first, oldest first, where no history is saved before ``night``:
    the ``settings.history_warmup_nights`` before it that the dataset holds (``dates``)."""
    known = set(dates)
    before = (night - timedelta(days=d) for d in range(settings.history_warmup_nights, 0, -1))
    return [d for d in before if d in known]


def _stored(folder: Path) -> dict[date, Path]:
    if not folder.is_dir():
        return {}
    found = (_FILE.fullmatch(p.name) for p in folder.iterdir())
    return {date.fromisoformat(m.group(1)): folder / m.group(0) for m in found if m}


class NightHistory:
    """The residual history a night is scored against, and the state it leaves.

    ``apply`` combines a scored batch's tails with its series' own-history tails (the
    larger probability: a point stays flagged only if both call it rare), marks alerts
    (a flagged point whose tail is below every tail of its series since the start of the
    night before: one alert a run of anomalous points, unless it grows) and records the
    batch's residuals (safe from several threads at once: it only reads the prior and
    appends); ``state`` is every series' history after the night (series not
    scored tonight carry theirs forward).
    """

    def __init__(self, prior: pl.DataFrame | None = None) -> None:
        if prior is not None and "min_tail" not in prior.columns:  # a state saved before alerts
            prior = prior.with_columns(min_tail=pl.lit(_UNSEEN["min_tail"]))
        self.prior = pl.DataFrame(schema=_SCHEMA) if prior is None else prior.cast(_SCHEMA)
        ids = self.prior["series_id"].to_numpy().astype(str)
        self._order = np.argsort(ids, kind="stable")  # series looked up by binary search
        self._sorted = ids[self._order]
        self._cols = {c: self.prior[c].to_numpy() for c in _UNSEEN}
        self._parts: list[pl.DataFrame] = []

    @classmethod
    def stored(cls, settings: Settings, night: date) -> NightHistory:
        """The state saved after the latest night before ``night`` (empty if none)."""
        before = {d: p for d, p in _stored(history_dir(settings)).items() if d < night}
        return cls(pl.read_parquet(before[max(before)]) if before else None)

    def apply(self, day: ScoredDay, false_alarm_rate: float) -> ScoredDay:
        ids = day.series_ids.astype(str)
        found = self._lookup(ids)
        history = ResidualHistory(found["count"], found["mean"], found["m2"])
        observed = day.observed & day.scored[:, None]
        residual = np.where(observed, day.residual, np.nan)  # the residuals' precision
        if day.level is not None:  # compared at one level (noise that grows with it)
            residual /= day.level
        tail = np.fmax(day.tail, own_tail(residual, history))  # NaN own tail: the cluster's
        np.copyto(tail, np.nan, where=np.isnan(day.tail))  # not scored stays so
        flag = day.flag & (tail < false_alarm_rate)
        lowest = np.minimum.accumulate(np.nan_to_num(tail, nan=1.0), axis=1)  # so far tonight
        before = np.minimum(np.concatenate([np.ones((len(ids), 1)), lowest[:, :-1]], axis=1),
                            found["min_tail"][:, None])  # fmt: skip
        after = history.merged(residual)
        self._parts.append(pl.DataFrame({"series_id": ids, "count": after.count,
                                         "mean": after.mean, "m2": after.m2,
                                         "min_tail": lowest[:, -1]}, schema=_SCHEMA))  # fmt: skip
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

    def state(self) -> pl.DataFrame:
        """Every series' history after the night, sorted by series id (batches may finish
        in any order; the file is the same whichever did)."""
        tonight = pl.concat(self._parts) if self._parts else pl.DataFrame(schema=_SCHEMA)
        carried = self.prior.join(tonight.select("series_id"), on="series_id", how="anti")
        both = pl.concat([tonight, carried]).unique("series_id", keep="first")
        return both.sort("series_id")

    def next(self) -> NightHistory:
        """The history the next night starts from (replays carry it night to night)."""
        return NightHistory(self.state())

    def save(self, settings: Settings, night: date) -> Path:
        """Write the state after ``night`` (replacing its file) and drop old states."""
        folder = history_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"night={night.isoformat()}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        self.state().write_parquet(tmp)
        os.replace(tmp, path)  # never half-written
        stored = _stored(folder)
        newest = max(stored)
        for d, p in stored.items():
            if d < newest - timedelta(days=KEEP_NIGHTS):
                p.unlink(missing_ok=True)
        return path
