"""Scoring a night: every profiled series adapted from its recent points and scored.

The window (K points plus the seasonal lags before the night, and the night) is read in
chunks of whole series; each chunk's series are routed to their cluster and scored in
batches of about ``chunk_series`` series per cluster: in-process on a thread pool, or one
Ray task per batch. Memory stays bounded; one cluster's failure is recorded and the others
finish.
"""

from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, timedelta

import numpy as np
import polars as pl

from tsmeta import progress
from tsmeta.clustering import period_of_cluster
from tsmeta.config import Settings
from tsmeta.data.io import dataset_dates, iter_window_panels
from tsmeta.data.panel import Panel
from tsmeta.detect import BASIS, BASIS_MEANING, ScoredDay, score_day
from tsmeta.jobs.common import (
    _require_night_partition,
    _window_start,
    engine_for,
    log,
    night_bounds,
)
from tsmeta.jobs.history import NightHistory, hold_stored, warmup_nights
from tsmeta.jobs.rows import no_points, points_frame
from tsmeta.jobs.threads import score_threads, score_workers, torch_threads
from tsmeta.meta.tasks import steps_read, window_reach
from tsmeta.meta.train import MetaModel
from tsmeta.store.models import load_latest_models
from tsmeta.store.writes import read_profile


def score_night(
    settings: Settings, night: date, run_id: str, keep: str = "flagged",
    history: NightHistory | None = None,
) -> tuple[pl.DataFrame, dict]:  # fmt: skip
    """Adapt and score every profiled series for ``night``; returns (rows, stats).

    ``keep="flagged"`` returns the flagged points (anomaly rows); ``keep="all"`` every
    scored point, with a boolean ``flag`` column (for evaluation and replays: 24 rows per
    hourly series, so keep ranges small at millions of series).

    The window (K points plus a seasonal lag before the night, and the night) is read in
    chunks of whole series; each chunk's series are routed to their cluster and scored in
    batches of about ``chunk_series`` series per cluster, so memory stays bounded and the
    batched adaptation runs on full batches. Series without a profile, clusters without a
    model and series with too few recent points are counted and logged, never silently
    dropped; one cluster's failure is recorded and the others finish. In-process scoring
    runs on ``settings.score_threads`` torch threads (see there; restored afterwards).

    With ``settings.own_history`` each point is also judged against its series' residuals
    on earlier nights (``tsmeta.jobs.history``): without ``history`` the state saved after
    the latest earlier night is read (built where none is: :func:`history_before`, and
    saved as the state after the last night it scored) and the night's state saved after
    it; a replay passes its own ``history`` and carries it on (nothing saved).
    """
    if keep not in ("flagged", "all"):
        raise ValueError(f"keep must be 'flagged' or 'all', received {keep!r}")
    t = time.perf_counter()
    _require_night_partition(settings, night)
    engine = engine_for(settings)
    models = load_latest_models(engine, model_dir=settings.model_dir)
    threads = score_threads(settings, models)
    stored = history is None and settings.own_history
    with torch_threads(threads):
        if stored:
            history = _history_before(settings, night, engine, models, threads, save=True)
        frame, stats = _score_models(settings, night, keep, engine, models, t,
                                     score_workers(settings, threads),
                                     history if settings.own_history else None)  # fmt: skip
    if stored:
        history.save(settings, night)  # saved again without its shared events' members
        hold_stored(settings, night, history)  # once they are known (``find_events``)
    return frame, stats


def history_before(settings: Settings, night: date) -> NightHistory:
    """The residual history ``night`` is judged against: the state saved after the latest
    earlier night, or where none is saved, one built by scoring the
    ``settings.history_warmup_nights`` nights before it with today's models (nothing is
    written or saved; nights without data are skipped)."""
    engine = engine_for(settings)
    models = load_latest_models(engine, model_dir=settings.model_dir)
    threads = score_threads(settings, models)
    with torch_threads(threads):
        return _history_before(settings, night, engine, models, threads)


def _history_before(settings: Settings, night: date, engine: object, models: dict,
                    threads: int, save: bool = False) -> NightHistory:  # fmt: skip
    """``history_before``'s body; ``save``: a history built from the nights before is saved
    as the state after the last of them (the nightly job: a re-run, and ``tsmeta explain``,
    read it instead of building it again)."""
    history = NightHistory.stored(settings, night)
    if not history.empty or not settings.history_warmup_nights or not models:
        return history
    warm = warmup_nights(settings, night, dataset_dates(settings.dataset_path))
    if warm:
        log.info("night %s: no residual history saved before it; building it from %s..%s",
                 night, warm[0], warm[-1])  # fmt: skip
    for earlier in warm:
        _score_models(settings, earlier, "flagged", engine, models, time.perf_counter(),
                      score_workers(settings, threads), history)  # fmt: skip
        if save and earlier == warm[-1]:  # as scored: with the points it holds for the next
            history.save(settings, earlier)
        history = history.next()
    return history


def _score_models(
    settings: Settings,
    night: date,
    keep: str,
    engine: object,
    models: dict,
    t: float,
    workers: int = 1,
    history: NightHistory | None = None,
) -> tuple[pl.DataFrame, dict]:
    """``score_night``'s body: read the window in chunks, route, score, summarise."""
    profile = read_profile(engine, ("series_id", "cluster_id"))
    if not models:
        raise LookupError("no meta-models in the registry: run `tsmeta train` first")
    start, read_days = _read_plan(settings, night, models)
    sizes = dict(profile.group_by("cluster_id").len().iter_rows())
    run = _NightScoring(settings, night, keep, models, sizes, workers, history)
    lookup = profile.select(pl.col("series_id").cast(pl.String), "cluster_id")
    panels = iter_window_panels(settings.dataset_path, start, night + timedelta(days=1),
                                settings.freq, 1 << 30, settings.read_chunk_rows,
                                read_days if settings.read_needed_days else None)  # fmt: skip
    read_wait, tick = 0.0, time.perf_counter()
    try:
        for panel in panels:
            read_wait += time.perf_counter() - tick
            run.route(panel, lookup)
            del panel
            tick = time.perf_counter()
        run.finish()
    finally:  # an error while reading: the batches still queued are dropped
        run.close()
    return run.summary(read_wait, time.perf_counter() - t)


def _read_plan(settings: Settings, night: date, models: dict) -> tuple[date, frozenset[date]]:
    """The first day of the window the models read, and the days within it that some model
    reads (the lags' weeks back, not every day between them)."""
    spd = settings.steps_per_day
    reach = max(window_reach(m.spec, m.config.k, m.config.horizon) for _, m in models.values())
    start = _window_start(settings, night, math.ceil(reach / spd))
    read_days = frozenset(
        night + timedelta(days=step // spd)
        for _, m in models.values()
        for step in steps_read(m.spec, m.config.k, m.config.horizon)
    )
    return start, read_days


def _unscorable(settings: Settings, models: dict, sizes: dict[str, int]) -> tuple[dict, int]:
    """({cluster: why}, series without a model) for the clusters that cannot be scored:
    no model yet, or a model whose horizon is not a night of this step."""
    spd = settings.steps_per_day
    failed: dict[str, str] = {}
    no_model = 0
    for cid, n_series in sorted(sizes.items()):
        if cid not in models:
            log.warning("cluster %s (%s series) has no model yet, not scored: run "
                        "`tsmeta train --cluster %s`", cid, f"{n_series:,}", cid)  # fmt: skip
            no_model += n_series
            failed[cid] = "no model"
        elif models[cid][1].config.horizon != spd:
            failed[cid] = (
                f"ValueError: model forecasts {models[cid][1].config.horizon} steps but a night "
                f"has {spd}; retrain it with horizon={spd}"
            )
            log.warning("cluster %s not scored: %s", cid, failed[cid])
    return failed, no_model


# a cluster's series wait in its buffer until they make a batch of ``chunk_series``; with
# many clusters and long windows (a million 5-minute series read 6,336 steps each) the
# buffers of every cluster together held 4 GiB. Past this many bytes the fullest buffer
# is submitted as it is (smaller batches, the same rows: scoring is per series).
BUFFERED_BYTES = 1 << 30


class _NightScoring:
    """One night's scoring in flight: batches buffered per cluster, submitted in-process
    (up to ``workers`` computing at once on a thread pool, collected in the order they
    were submitted, so the rows come out as a serial run's) or to Ray (one task per
    batch; each model travels once), and what came back: rows and counts per cluster,
    and the clusters that failed."""

    def __init__(self, settings: Settings, night: date, keep: str, models: dict,
                 sizes: dict[str, int], workers: int,
                 history: NightHistory | None = None) -> None:  # fmt: skip
        self.settings, self.keep, self.models, self.sizes = settings, keep, models, sizes
        self.history = history
        self.workers = workers
        self.night_start, _ = night_bounds(night)
        self.failed, no_model = _unscorable(settings, models, sizes)
        self.stats: dict = {"clusters": {}, "unprofiled_series": 0, "no_model_series": no_model,
                            "series_with_data": 0}  # fmt: skip
        self.counts = {cid: {"scored": 0, "points": 0, "flagged": 0, **dict.fromkeys(BASIS, 0)}
                       for cid in sizes}  # fmt: skip
        self.frames: dict[str, list[pl.DataFrame]] = {cid: [] for cid in sizes}
        self.pbar = progress.bar("score", total=sum(sizes.values()))
        self.ray_scorer = None
        if settings.executor == "ray":
            from tsmeta.execution import RayScorer

            self.ray_scorer = RayScorer(settings.ray_address, settings.false_alarm_rate,
                                        settings.chunk_series, device=settings.device,
                                        causal=settings.causal)  # fmt: skip
        self.pool = ThreadPoolExecutor(workers, "tsmeta-score") if self.ray_scorer is None else None
        self.pending: deque[tuple[str, Future]] = deque()
        self.buffers: dict[str, list[Panel]] = {}

    def route(self, panel: Panel, lookup: pl.DataFrame) -> None:
        """Split a chunk of series by cluster into the clusters' buffers; a full buffer is
        submitted. Series without a profile are counted."""
        spd = self.settings.steps_per_day
        ids = pl.Series("series_id", panel.series_ids).cast(pl.String)
        located = (
            pl.DataFrame({"series_id": ids, "_row": np.arange(len(ids))})
            .join(lookup, on="series_id", how="left")
        )  # fmt: skip
        self.stats["unprofiled_series"] += located.get_column("cluster_id").null_count()
        profiled = located.drop_nulls("cluster_id").get_column("_row").to_numpy()
        self.stats["series_with_data"] += int(panel.mask[profiled, -spd:].any(axis=1).sum())
        ids_np = ids.to_numpy()
        for cid, rows in (
            located.drop_nulls("cluster_id").group_by("cluster_id").agg("_row").iter_rows()
        ):
            if cid in self.failed:
                continue
            rows = np.sort(np.asarray(rows))
            part = Panel(panel.values[rows], panel.mask[rows], ids_np[rows], panel.start,
                         panel.freq)  # fmt: skip
            self.buffers.setdefault(cid, []).append(part)
            if _series(self.buffers[cid]) >= self.settings.chunk_series:
                self.flush(cid)
        while sum(_nbytes(parts) for parts in self.buffers.values()) > BUFFERED_BYTES:
            self.flush(max(self.buffers, key=lambda c: _series(self.buffers[c])))

    def flush(self, cid: str) -> None:
        parts = self.buffers.pop(cid, [])
        if parts and cid not in self.failed:
            self.submit(cid, _stack(parts))

    def submit(self, cid: str, batch: Panel) -> None:
        model = self.models[cid][1]
        if self.history is not None:  # earlier nights' shared events are not the normal
            batch = self.history.without_events(batch, cid, model.config.k, model.config.horizon,
                                                self.settings.holidays, period_of_cluster(cid),
                                                in_place=True)  # route's own copy  # fmt: skip
        if self.ray_scorer is not None:
            for done_cid, _, day in self.ray_scorer.submit(cid, model.state(), batch):
                self.collect(done_cid, day)
            return
        self.pending.append((cid, self.pool.submit(_score_batch, self.settings, batch, model,
                                                   cid, self.history)))  # fmt: skip
        while len(self.pending) > self.workers:  # memory bounded: at most ``workers`` batches held
            self.collect_oldest()

    def collect_oldest(self) -> None:
        cid, future = self.pending.popleft()
        try:  # scoring's error or turning the result into rows: that cluster's failure
            self.collect(cid, future.result())
        except Exception as exc:  # noqa: BLE001 - one cluster's failure is recorded, the others go on
            self.fail(cid, exc)

    def collect(self, cid: str, day: object) -> None:
        """A scored batch (a ScoredDay, or the exception that scoring it raised)."""
        if isinstance(day, BaseException):
            self.fail(cid, day)
            return
        self.pbar.update(len(day.series_ids))
        if cid in self.failed:
            return
        version = self.models[cid][0]
        if self.history is not None and self.ray_scorer is not None:  # in-process: applied
            day = self.history.apply(day, self.settings.false_alarm_rate, cid)  # by _score_batch
        self.frames[cid].append(points_frame(day, self.night_start, self.settings.freq, cid, version,
                                             self.settings.false_alarm_rate,
                                             self.keep == "all"))  # fmt: skip
        c = self.counts[cid]
        c["scored"] += int(day.scored.sum())
        c["points"] += int((day.observed & day.scored[:, None]).sum())
        c["flagged"] += int(day.flag.sum())
        for name, count in day.basis_counts().items():
            c[name] += count

    def fail(self, cid: str, exc: BaseException) -> None:
        if cid not in self.failed:
            log.error("scoring cluster %s failed: %s", cid, exc)
            self.failed[cid] = f"{type(exc).__name__}: {exc}"
            self.frames[cid].clear()

    def finish(self) -> None:
        """Submit what the buffers hold and collect every batch still out."""
        for cid in sorted(self.buffers):
            self.flush(cid)
        if self.ray_scorer is not None:
            for cid, _, day in self.ray_scorer.drain():
                self.collect(cid, day)
        else:
            while self.pending:
                self.collect_oldest()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def summary(self, read_wait: float, seconds: float) -> tuple[pl.DataFrame, dict]:
        """(the rows of every cluster that did not fail, the night's counts)."""
        self.pbar.close()
        failed, stats = self.failed, self.stats
        basis_totals = {b: sum(c[b] for cid, c in self.counts.items() if cid not in failed)
                        for b in BASIS}  # fmt: skip
        if any(basis_totals[b] for b in BASIS[1:]):  # anything but "adapted"
            log.info("forecast basis: %s (%s)",
                     ", ".join(f"{b} {n:,}" for b, n in basis_totals.items()),
                     "; ".join(f"{b}: {BASIS_MEANING[b]}" for b in BASIS[1:]))  # fmt: skip
        if stats["unprofiled_series"]:
            log.warning("%s series have data but no profile, not scored: run `tsmeta profile`",
                        f"{stats['unprofiled_series']:,}")  # fmt: skip
        for cid, n_series in sorted(self.sizes.items()):
            if cid in failed:
                stats["clusters"][cid] = {"series": n_series, "scored": 0, "flagged": 0,
                                          "error": failed[cid]}  # fmt: skip
            else:
                stats["clusters"][cid] = {"series": n_series, **self.counts[cid],
                                          "model_version": self.models[cid][0]}  # fmt: skip
        found = [f for cid in sorted(self.frames) if cid not in failed for f in self.frames[cid]]
        out = pl.concat(found) if found else no_points(self.keep == "all")
        clusters = stats["clusters"].values()
        stats.update(
            series=sum(c["series"] for c in clusters),
            series_scored=sum(c["scored"] for c in clusters),
            points_scored=sum(c.get("points", 0) for c in clusters),
            flagged=sum(c.get("flagged", 0) for c in clusters),
            scored_clusters=[cid for cid, c in stats["clusters"].items() if "error" not in c],
            basis=basis_totals,
            read_wait_seconds=round(read_wait, 2),  # waiting for data (reading overlaps scoring)
            seconds=round(seconds, 2),
        )
        return out, stats


def _series(parts: list[Panel]) -> int:
    return sum(p.n_series for p in parts)


def _nbytes(parts: list[Panel]) -> int:
    return sum(p.values.nbytes + p.mask.nbytes for p in parts)


def _stack(parts: list[Panel]) -> Panel:
    """One panel of the rows of several panels over the same window."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return Panel(
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.mask for p in parts]),
        np.concatenate([p.series_ids for p in parts]),
        first.start,
        first.freq,
    )


def _score_batch(settings: Settings, batch: Panel, model: MetaModel, cid: str,
                 history: NightHistory | None) -> ScoredDay:  # fmt: skip
    """Score one batch of cluster ``cid``'s series in this process, against its series'
    residual history too when given (on the worker thread: the reader goes on meanwhile)."""
    day = score_day(batch.values, batch.mask, batch.series_ids, batch.start_step, model,
                    settings.false_alarm_rate, settings.chunk_series,
                    settings.torch_device(), causal=settings.causal)  # fmt: skip
    return day if history is None else history.apply(day, settings.false_alarm_rate, cid)
