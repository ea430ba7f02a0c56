"""The pipeline's steps as plain Python calls: read, compute, write.

Each function is one step of the nightly story and is what a Prefect task wraps (see
``pipelines/``); everything here runs without Prefect. The numerical work lives in
``periodicity``, ``clustering``, ``meta`` and ``detect``; this module only wires data in
and results out.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from tsmeta import progress
from tsmeta.clustering import ClusterSet, period_of_cluster, seasonal_shape, shape_length
from tsmeta.config import Settings
from tsmeta.data.io import dataset_dates, iter_window_panels
from tsmeta.data.panel import Panel, freq_timedelta
from tsmeta.data.schema import EmptyInputError
from tsmeta.detect import BASIS, BASIS_MEANING, SEVERITY, score_day, severity_of, surprise_of
from tsmeta.events import shared_events
from tsmeta.forecaster import FeatureSpec
from tsmeta.meta.batched import head_only
from tsmeta.meta.tasks import steps_read, window_reach
from tsmeta.meta.train import MetaConfig, MetaModel
from tsmeta.periodicity import detect_periods
from tsmeta.store.models import load_latest_models, save_model
from tsmeta.store.schema import create_engine, create_schema
from tsmeta.store.writes import (
    read_clusters,
    read_profile,
    replace_night,
    upsert_series,
    write_profile,
)

__all__ = [
    "engine_for",
    "points_frame",
    "profile_series",
    "train_models",
    "score_night",
    "run_night",
    "find_events",
    "replay",
    "write_night",
    "latest_date",
    "night_bounds",
    "default_night",
    "NightDataMissing",
    "require_night_data",
]

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


PROFILE_CELLS = 1 << 25  # series x steps per profiling chunk (128 MiB per float32 array)


def profile_series(settings: Settings, as_of: date, run_id: str, recluster: bool = False) -> dict:
    """Detect periods on the ``history_days`` before ``as_of``, cluster, store the profile.

    Reads the window in chunks of whole series (memory bounded by ``read_chunk_rows``).
    Series are assigned to the nearest stored centroid of their period group; a group
    without clusters (the first profiling, or a period seen for the first time) is fitted,
    as is every group when ``recluster`` is set.
    """
    t = time.perf_counter()
    timings: dict[str, float] = {"read": 0.0, "detect": 0.0}
    engine = engine_for(settings)
    previous = ClusterSet.from_rows(read_clusters(engine))
    start = _window_start(settings, as_of, settings.history_days)
    default = settings.period_default
    parts, seen_parts = [], []
    pending: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # (part, rows, shapes)
    # long windows of short steps (two weeks of minutes: 20,160 points) read fewer series
    # at once, so that period detection's arrays stay about PROFILE_CELLS values each
    n_steps = settings.history_days * settings.steps_per_day
    chunk = max(64, min(settings.chunk_series, PROFILE_CELLS // n_steps))
    panels = iter_window_panels(settings.dataset_path, start, as_of, settings.freq,
                                chunk, settings.read_chunk_rows)  # fmt: skip
    tick = time.perf_counter()
    pbar = progress.bar("profile")
    for i, panel in enumerate(panels):
        pbar.update(panel.n_series)
        timings["read"] += time.perf_counter() - tick
        tick = time.perf_counter()
        res = detect_periods(panel.values, panel.mask, settings.candidate_periods, settings.min_acf)
        cluster = np.empty(panel.n_series, dtype=object)
        for p in np.unique(res.period):
            rows = np.flatnonzero(res.period == p)
            shapes = seasonal_shape(panel.values[rows], panel.mask[rows], panel.start_step,
                                    shape_length(p, default))  # fmt: skip
            if int(p) in previous and not recluster:
                cluster[rows] = previous.assign(int(p), shapes)
            else:
                pending.setdefault(int(p), []).append((i, rows, shapes))
        parts.append({"series_id": panel.series_ids, "period": res.period,
                      "strength": res.strength, "cluster_id": cluster})  # fmt: skip
        seen_parts.append(_seen(panel))
        timings["detect"] += time.perf_counter() - tick
        tick = time.perf_counter()
    pbar.close()
    if not parts:
        raise EmptyInputError(f"no series in {settings.dataset_path} for [{start}, {as_of})")

    tick = time.perf_counter()
    fitted = ClusterSet({} if recluster else dict(previous.groups))
    for p, items in sorted(pending.items()):
        labels = fitted.fit(p, np.concatenate([s for _, _, s in items]),
                            settings.max_cluster_size, settings.seed, previous)  # fmt: skip
        at = 0
        for i, rows, _ in items:
            parts[i]["cluster_id"][rows] = labels[at : at + len(rows)]
            at += len(rows)
    timings["cluster"] = time.perf_counter() - tick

    tick = time.perf_counter()
    profile = pl.concat(
        [pl.DataFrame({**d, "cluster_id": d["cluster_id"].astype(str)}) for d in parts]
    )
    seen = pl.concat(seen_parts).drop_nulls("first_seen")
    with progress.bar("write profile", total=profile.height + seen.height, unit="rows") as pbar:
        write_profile(engine, profile, run_id, fitted.rows(), settings.max_cluster_size,
                      progress=pbar.update)  # fmt: skip
        upsert_series(engine, seen, progress=pbar.update)
    timings["write"] = time.perf_counter() - tick

    sizes = dict(profile.group_by("cluster_id").len().sort("cluster_id").iter_rows())
    over = {c: n for c, n in sizes.items() if n > settings.max_cluster_size}
    if over:
        log.warning(
            "%d cluster(s) exceed max_cluster_size=%d after assignment (%s): run "
            "`tsmeta profile --recluster` to split them, then `tsmeta train`",
            len(over), settings.max_cluster_size, ", ".join(f"{c}: {n}" for c, n in over.items()),
        )  # fmt: skip
    fresh = sorted(set(fitted.cluster_ids) - set(previous.cluster_ids))
    if fresh and previous.groups:
        log.warning("new cluster(s) without a model until `tsmeta train`: %s", ", ".join(fresh))
    return {"series": profile.height, "clusters": sizes, "window": [str(start), str(as_of)],
            "fitted_periods": sorted(pending), "new_clusters": fresh, "recluster": recluster,
            "oversized": over, "timings": {k: round(v, 2) for k, v in timings.items()},
            "seconds": round(time.perf_counter() - t, 2)}  # fmt: skip


def _seen(panel) -> pl.DataFrame:  # noqa: ANN001 - a Panel
    """series_id, first_seen, last_seen (observed points of the panel; null if none)."""
    any_obs = panel.mask.any(axis=1)
    first = panel.mask.argmax(axis=1)
    last = panel.n_steps - 1 - panel.mask[:, ::-1].argmax(axis=1)
    stamps = panel.timestamps()
    return (
        pl.DataFrame({"series_id": panel.series_ids})
        .with_columns(
            pl.Series("first_seen", stamps[first]).dt.replace_time_zone("UTC"),
            pl.Series("last_seen", stamps[last]).dt.replace_time_zone("UTC"),
        )
        .with_columns(
            pl.when(pl.Series(any_obs)).then(pl.col(c)).alias(c)
            for c in ("first_seen", "last_seen")
        )
    )


def meta_config(settings: Settings, **overrides: object) -> MetaConfig:
    values = {
        "algorithm": settings.algorithm, "k": settings.k, "horizon": settings.horizon,
        "hidden": settings.hidden,
        "inner_steps": settings.inner_steps, "inner_lr": settings.inner_lr,
        "meta_batch": settings.meta_batch, "meta_steps": settings.meta_steps,
        "meta_lr": settings.meta_lr, "seed": settings.seed, "cut_every": settings.steps_per_day,
        "steps_per_day": settings.steps_per_day,
    }  # fmt: skip
    values.update({k: v for k, v in overrides.items() if v is not None})
    return MetaConfig(**values)  # type: ignore[arg-type]


def k_for(settings: Settings, cluster_id: str) -> int:
    """Support points of a cluster's series: ``settings.k``, or with ``k_rule="period"`` one
    period of the cluster (aperiodic: ``settings.k``), at most ``k_max``."""
    period = period_of_cluster(cluster_id)
    if settings.k_rule == "period" and period:
        return min(period, settings.k_max)
    return settings.k


def _spec_for(settings: Settings, cluster_id: str) -> FeatureSpec:
    period = period_of_cluster(cluster_id) or settings.period_default
    week = 7 * settings.steps_per_day
    return FeatureSpec(
        period=period,
        relative_to_lag=settings.relative_to_lag,
        # the veto also asks what the series did a week before, where the period is shorter
        veto_lag=week if period < week else 0,
        # and the forecaster reads it too (the window holds that week for the veto anyway)
        second_lag=week if settings.week_lag_input and period < week else 0,
        lag_periods=settings.lag_periods,
    )


def train_models(
    settings: Settings,
    as_of: date,
    run_id: str,
    clusters: list[str] | None = None,
    on_done: Callable[[str, object], None] | None = None,
    **config_overrides: object,
) -> dict:
    """Meta-train one model per cluster on the ``train_days`` before ``as_of`` (via Ray).

    Returns {cluster_id: {"version", "metrics"} or {"error"}}; one cluster's failure does
    not stop the others.
    """
    from tsmeta.execution import ClusterJob, train_clusters

    engine = engine_for(settings)
    profile = read_profile(engine)
    known = sorted(profile.get_column("cluster_id").unique().to_list())
    if clusters:
        unknown = sorted(set(clusters) - set(known))
        if unknown:
            raise ValueError(f"unknown cluster(s) {unknown}: the profile has {known}")
    wanted = clusters or known
    start = _window_start(settings, as_of, settings.train_days)
    begin, _ = night_bounds(start)
    end, _ = night_bounds(as_of)
    n_steps = int((end - begin) / freq_timedelta(settings.freq))
    cfg = meta_config(settings, **config_overrides)
    rng = np.random.default_rng(settings.seed)
    # a sample of each cluster's series (enough tasks; bounded memory), gathered from a
    # chunked read of the window: only the sampled series are kept
    sampled, panels = [], {}
    for cid in wanted:
        ids = profile.filter(pl.col("cluster_id") == cid).get_column("series_id").to_numpy()
        if len(ids) > settings.train_series_per_cluster:
            ids = np.sort(rng.choice(ids, settings.train_series_per_cluster, replace=False))
        sampled.append(pl.DataFrame({"series_id": ids.astype(str), "cluster_id": cid,
                                     "_slot": np.arange(len(ids))}))  # fmt: skip
        panels[cid] = Panel(np.full((len(ids), n_steps), np.nan, dtype=np.float32),
                            np.zeros((len(ids), n_steps), dtype=bool), ids, begin, settings.freq)  # fmt: skip
    wanted_rows = pl.concat(sampled)
    for chunk in iter_window_panels(settings.dataset_path, start, as_of, settings.freq, 1 << 30,
                                    settings.read_chunk_rows):  # fmt: skip
        ids = pl.Series("series_id", chunk.series_ids).cast(pl.String)
        hit = pl.DataFrame({"series_id": ids, "_row": np.arange(len(ids))}).join(
            wanted_rows, on="series_id", how="inner"
        )
        for (cid,), part in hit.partition_by("cluster_id", as_dict=True).items():
            rows, slots = part.get_column("_row").to_numpy(), part.get_column("_slot").to_numpy()
            panels[cid].values[slots] = chunk.values[rows]
            panels[cid].mask[slots] = chunk.mask[rows]
    jobs = [
        ClusterJob(cid, panels[cid].values, panels[cid].mask, panels[cid].start_step,
                   _spec_for(settings, cid).to_dict(),
                   {**cfg.__dict__, "k": config_overrides.get("k") or k_for(settings, cid)})
        for cid in wanted
    ]  # fmt: skip
    del panels
    pbar = progress.bar("meta-train", total=len(jobs), unit="cluster")

    def done(cid: str, res: object) -> None:
        pbar.update(1)
        if isinstance(res, BaseException):
            pbar.write(f"  {cid}: failed: {res}")
        else:
            m = res["metrics"]  # type: ignore[index]
            penalty = f", ridge penalty {m['ridge_penalty']:.3g}" if "ridge_penalty" in m else ""
            pbar.write(f"  {cid}: {m['n_series']:,} series, val query MSE "
                       f"{m['val_query_mse_adapted']:.4f} adapted / "
                       f"{m['val_query_mse_unadapted']:.4f} unadapted{penalty}, "
                       f"{m['seconds']:.1f}s")  # fmt: skip
        if on_done is not None:
            on_done(cid, res)

    try:
        results = train_clusters(jobs, settings.ray_address, done)
    finally:
        pbar.close()
    out: dict[str, dict] = {}
    for cid, res in results.items():
        if isinstance(res, BaseException):
            log.error("meta-training of cluster %s failed: %s", cid, res)
            out[cid] = {"error": f"{type(res).__name__}: {res}"}
            continue
        model = MetaModel.from_state(res)
        version = save_model(engine, settings.model_dir, cid, model, run_id, begin, end)
        out[cid] = {
            "version": version,
            "metrics": {k: v for k, v in model.metrics.items() if k != "history"},
        }
    return out


def score_night(
    settings: Settings, night: date, run_id: str, keep: str = "flagged"
) -> tuple[pl.DataFrame, dict]:
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
    """
    if keep not in ("flagged", "all"):
        raise ValueError(f"keep must be 'flagged' or 'all', received {keep!r}")
    t = time.perf_counter()
    _require_night_partition(settings, night)
    engine = engine_for(settings)
    models = load_latest_models(engine, model_dir=settings.model_dir)
    threads = score_threads(settings, models)
    with _torch_threads(threads):
        return _score_models(settings, night, keep, engine, models, t,
                             score_workers(settings, threads))  # fmt: skip


def score_threads(settings: Settings, models: dict[str, tuple[int, MetaModel]]) -> int:
    """torch threads for in-process scoring of ``models`` (0: leave torch's as they are)."""
    if settings.executor != "local":
        return 0  # each Ray worker sets its own
    if settings.score_threads is not None:
        return settings.score_threads
    return 1 if models and all(head_only(m.rates) for _, m in models.values()) else 0


def score_workers(settings: Settings, threads: int) -> int:
    """Batches scored at once in-process (``Settings.score_workers``; unset: one per core
    when each runs on one torch thread on the CPU, else 1)."""
    if settings.executor != "local":
        return 1  # the Ray workers are the parallelism
    if settings.score_workers is not None:
        return settings.score_workers
    if threads != 1 or settings.torch_device() != "cpu":
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)  # fmt: skip


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside (0: left as they are), then restored."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def _score_models(
    settings: Settings,
    night: date,
    keep: str,
    engine: object,
    models: dict,
    t: float,
    workers: int = 1,
) -> tuple[pl.DataFrame, dict]:
    profile = read_profile(engine, ("series_id", "cluster_id"))
    if not models:
        raise LookupError("no meta-models in the registry: run `tsmeta train` first")
    spd = settings.steps_per_day
    reach = max(window_reach(m.spec, m.config.k, m.config.horizon) for _, m in models.values())
    start = _window_start(settings, night, math.ceil(reach / spd))
    # only the days some model reads (the lags' weeks back, not every day between them)
    read_days = frozenset(
        night + timedelta(days=step // spd)
        for _, m in models.values()
        for step in steps_read(m.spec, m.config.k, m.config.horizon)
    )
    night_start, _ = night_bounds(night)
    sizes = dict(profile.group_by("cluster_id").len().iter_rows())

    stats: dict = {"clusters": {}, "unprofiled_series": 0, "no_model_series": 0,
                   "series_with_data": 0}  # fmt: skip
    failed: dict[str, str] = {}
    for cid, n_series in sorted(sizes.items()):
        if cid not in models:
            log.warning("cluster %s (%s series) has no model yet, not scored: run "
                        "`tsmeta train --cluster %s`", cid, f"{n_series:,}", cid)  # fmt: skip
            stats["no_model_series"] += n_series
            failed[cid] = "no model"
        elif models[cid][1].config.horizon != spd:
            failed[cid] = (
                f"ValueError: model forecasts {models[cid][1].config.horizon} steps but a night "
                f"has {spd}; retrain it with horizon={spd}"
            )
            log.warning("cluster %s not scored: %s", cid, failed[cid])
    counts = {cid: {"scored": 0, "points": 0, "flagged": 0, **dict.fromkeys(BASIS, 0)}
              for cid in sizes}  # fmt: skip
    frames: dict[str, list[pl.DataFrame]] = {cid: [] for cid in sizes}  # rows kept per cluster
    pbar = progress.bar("score", total=sum(sizes.values()))

    def collect(cid: str, day: object) -> None:
        if isinstance(day, BaseException):
            fail(cid, day)
            return
        pbar.update(len(day.series_ids))
        if cid in failed:
            return
        version = models[cid][0]
        frames[cid].append(points_frame(day, night_start, settings.freq, cid, version,
                                          settings.false_alarm_rate, keep == "all"))  # fmt: skip
        c = counts[cid]
        c["scored"] += int(day.scored.sum())
        c["points"] += int((day.observed & day.scored[:, None]).sum())
        c["flagged"] += int(day.flag.sum())
        for name, count in day.basis_counts().items():
            c[name] += count

    def fail(cid: str, exc: BaseException) -> None:
        if cid not in failed:
            log.error("scoring cluster %s failed: %s", cid, exc)
            failed[cid] = f"{type(exc).__name__}: {exc}"
            frames[cid].clear()

    ray_scorer = None
    if settings.executor == "ray":  # one Ray task per batch; each model travels once
        from tsmeta.execution import RayScorer

        ray_scorer = RayScorer(settings.ray_address, settings.false_alarm_rate,
                               settings.chunk_series, device=settings.device,
                               causal=settings.causal)  # fmt: skip

    # in-process: up to ``workers`` batches computing at once on a thread pool, collected
    # here in the order they were submitted (so the rows come out as a serial run's)
    pool = ThreadPoolExecutor(workers, "tsmeta-score") if ray_scorer is None else None
    pending: deque[tuple[str, Future]] = deque()

    def collect_oldest() -> None:
        cid, future = pending.popleft()
        try:  # scoring's error or turning the result into rows: that cluster's failure
            collect(cid, future.result())
        except Exception as exc:  # noqa: BLE001 - one cluster's failure is recorded, the others go on
            fail(cid, exc)

    def submit(cid: str, batch: Panel) -> None:
        model = models[cid][1]
        if ray_scorer is not None:
            for done_cid, _, day in ray_scorer.submit(cid, model.state(), batch):
                collect(done_cid, day)
            return
        pending.append((cid, pool.submit(_score_batch, settings, batch, model, cid)))
        while len(pending) > workers:  # memory bounded: at most ``workers`` batches held
            collect_oldest()

    buffers: dict[str, list[Panel]] = {}

    def flush(cid: str) -> None:
        parts = buffers.pop(cid, [])
        if parts and cid not in failed:
            submit(cid, _stack(parts))

    lookup = profile.select(pl.col("series_id").cast(pl.String), "cluster_id")
    panels = iter_window_panels(settings.dataset_path, start, night + timedelta(days=1),
                                settings.freq, 1 << 30, settings.read_chunk_rows,
                                read_days if settings.read_needed_days else None)  # fmt: skip
    read_wait, tick = 0.0, time.perf_counter()
    try:
        for panel in panels:
            read_wait += time.perf_counter() - tick
            ids = pl.Series("series_id", panel.series_ids).cast(pl.String)
            located = (
                pl.DataFrame({"series_id": ids, "_row": np.arange(len(ids))})
                .join(lookup, on="series_id", how="left")
            )  # fmt: skip
            stats["unprofiled_series"] += located.get_column("cluster_id").null_count()
            profiled = located.drop_nulls("cluster_id").get_column("_row").to_numpy()
            stats["series_with_data"] += int(panel.mask[profiled, -spd:].any(axis=1).sum())
            ids_np = ids.to_numpy()
            for cid, rows in (
                located.drop_nulls("cluster_id").group_by("cluster_id").agg("_row").iter_rows()
            ):
                if cid in failed:
                    continue
                rows = np.sort(np.asarray(rows))
                part = Panel(panel.values[rows], panel.mask[rows], ids_np[rows], panel.start,
                             panel.freq)  # fmt: skip
                buffers.setdefault(cid, []).append(part)
                if sum(p.n_series for p in buffers[cid]) >= settings.chunk_series:
                    flush(cid)
            del panel
            tick = time.perf_counter()
        for cid in sorted(buffers):
            flush(cid)
        if ray_scorer is not None:
            for cid, _, day in ray_scorer.drain():
                collect(cid, day)
        else:
            while pending:
                collect_oldest()
    finally:  # an error while reading: the batches still queued are dropped
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    pbar.close()
    basis_totals = {b: sum(c[b] for cid, c in counts.items() if cid not in failed) for b in BASIS}
    if any(basis_totals[b] for b in BASIS[1:]):  # anything but "adapted"
        log.info("forecast basis: %s (%s)",
                 ", ".join(f"{b} {n:,}" for b, n in basis_totals.items()),
                 "; ".join(f"{b}: {BASIS_MEANING[b]}" for b in BASIS[1:]))  # fmt: skip
    if stats["unprofiled_series"]:
        log.warning("%s series have data but no profile, not scored: run `tsmeta profile`",
                    f"{stats['unprofiled_series']:,}")  # fmt: skip

    for cid, n_series in sorted(sizes.items()):
        if cid in failed:
            stats["clusters"][cid] = {"series": n_series, "scored": 0, "flagged": 0,
                                      "error": failed[cid]}  # fmt: skip
        else:
            stats["clusters"][cid] = {"series": n_series, **counts[cid],
                                      "model_version": models[cid][0]}  # fmt: skip
    found = [f for cid in sorted(frames) if cid not in failed for f in frames[cid]]
    out = pl.concat(found) if found else pl.DataFrame()
    clusters = stats["clusters"].values()
    stats.update(
        series=sum(c["series"] for c in clusters),
        series_scored=sum(c["scored"] for c in clusters),
        points_scored=sum(c.get("points", 0) for c in clusters),
        flagged=sum(c.get("flagged", 0) for c in clusters),
        scored_clusters=[cid for cid, c in stats["clusters"].items() if "error" not in c],
        basis=basis_totals,
        read_wait_seconds=round(read_wait, 2),  # waiting for data (reading overlaps scoring)
        seconds=round(time.perf_counter() - t, 2),
    )
    return out, stats


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


def _score_batch(settings: Settings, batch: Panel, model: MetaModel, cid: str):  # noqa: ANN202
    """Score one batch of a cluster's series in this process (a ScoredDay)."""
    return score_day(batch.values, batch.mask, batch.series_ids, batch.start_step, model,
                     settings.false_alarm_rate, settings.chunk_series,
                     settings.torch_device(), causal=settings.causal)  # fmt: skip


def points_frame(
    day, night_start: datetime, freq: str, cluster_id: str, version: int,
    false_alarm_rate: float, every_point: bool = False,
) -> pl.DataFrame:  # noqa: ANN001  # fmt: skip
    """The flagged points of a scored chunk as anomaly rows (every scored point, with a
    ``flag`` column, when ``every_point``)."""
    if every_point:
        rows, hours = np.nonzero(day.observed & day.scored[:, None])
    else:
        rows, hours = day.flagged_rows()
    step_us = int(freq_timedelta(freq) / timedelta(microseconds=1))
    ts = np.datetime64(night_start.replace(tzinfo=None), "us") + hours * np.timedelta64(
        step_us, "us"
    )
    resid = day.residual[rows, hours]
    frame = pl.DataFrame(
        {
            "series_id": day.series_ids[rows].astype(str),
            "ts": ts,
            "value": day.value[rows, hours].astype(np.float64),
            "forecast": day.forecast[rows, hours].astype(np.float64),
            "lower": day.lower[rows, hours].astype(np.float64),
            "upper": day.upper[rows, hours].astype(np.float64),
            "residual": resid.astype(np.float64),
            "score": day.score[rows, hours].astype(np.float64),
            "surprise": surprise_of(day.tail[rows, hours]),
            "direction": np.where(resid > 0, "up", "down"),
            "severity": np.asarray(SEVERITY)[severity_of(day.tail[rows, hours], false_alarm_rate)],
            "basis": np.asarray(BASIS)[day.basis[rows]],
            "cluster_id": np.full(len(rows), cluster_id),
            "model_version": np.full(len(rows), version, dtype=np.int64),
        },
        schema_overrides={
            "series_id": pl.String,
            "direction": pl.String,
            "cluster_id": pl.String,
            "severity": pl.String,
            "basis": pl.String,
        },  # fmt: skip
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    if every_point:
        frame = frame.with_columns(pl.Series("flag", day.flag[rows, hours])).with_columns(
            pl.when(pl.col("flag")).then(pl.col("severity")).alias("severity")  # flags only
        )
    return frame


def run_night(
    settings: Settings, night: date, run_id: str, write: bool = True, keep: str = "flagged"
) -> tuple[pl.DataFrame, dict]:
    """Score one night, find its shared events and (``write``) replace its anomalies and
    events in the database.

    The nightly flow's body; ``keep`` as in :func:`score_night`; the rows gain an
    ``event_id`` (the shared event a flagged point belongs to, ``tsmeta.events``). Only
    flagged points are written either way. Re-running a night replaces its rows
    (idempotent).
    """
    frame, stats = score_night(settings, night, run_id, keep)
    flagged = frame.filter(pl.col("flag")).drop("flag") if "flag" in frame.columns else frame
    shared, flagged = find_events(settings, night, flagged, stats)
    if write:
        require_night_data(settings, night, stats)
        stats["written"] = write_night(settings, flagged, night, run_id, stats["scored_clusters"],
                                       shared)  # fmt: skip
    if keep == "all" and frame.height:
        frame = frame.join(flagged.select("series_id", "ts", "event_id"), on=["series_id", "ts"],
                           how="left")  # fmt: skip
        return frame, stats
    return flagged, stats


def find_events(
    settings: Settings, night: date, flagged: pl.DataFrame, stats: dict
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(shared events, the flagged rows with their ``event_id``) of a night scored by
    :func:`score_night` (``tsmeta.events.shared_events`` with the settings' thresholds and
    holiday calendar); counts them into ``stats``."""
    scored = {cid: c.get("scored", 0) for cid, c in stats["clusters"].items()}
    shared, flagged = shared_events(flagged, scored, freq_timedelta(settings.freq),
                                    settings.event_min_share, settings.event_min_series,
                                    settings.holidays)  # fmt: skip
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
    """
    if last < first:
        raise ValueError(f"empty date range: {last} is before {first}; give first <= last")
    night = first
    while night <= last:
        frame, stats = run_night(settings, night, run_id, write, keep)
        yield night, frame, stats
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
