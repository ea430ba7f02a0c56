"""Profiling: each series' period and strength, then its cluster (shape within the period)."""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import polars as pl

from tsmeta import progress
from tsmeta.clustering import ClusterSet, seasonal_shape, shape_length
from tsmeta.config import Settings
from tsmeta.data.io import iter_window_panels
from tsmeta.data.schema import EmptyInputError
from tsmeta.jobs.common import _window_start, engine_for, log
from tsmeta.periodicity import detect_periods
from tsmeta.store.writes import read_clusters, upsert_series, write_profile

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
        parts.append(_profile_chunk(settings, panel, i, previous, recluster, pending))
        seen_parts.append(_seen(panel))
        timings["detect"] += time.perf_counter() - tick
        tick = time.perf_counter()
    pbar.close()
    if not parts:
        raise EmptyInputError(f"no series in {settings.dataset_path} for [{start}, {as_of})")

    tick = time.perf_counter()
    fitted = _fit_pending(settings, previous, pending, parts, recluster)
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
    over, fresh = _warn_about_clusters(settings, sizes, fitted, previous)
    return {"series": profile.height, "clusters": sizes, "window": [str(start), str(as_of)],
            "fitted_periods": sorted(pending), "new_clusters": fresh, "recluster": recluster,
            "oversized": over, "timings": {k: round(v, 2) for k, v in timings.items()},
            "seconds": round(time.perf_counter() - t, 2)}  # fmt: skip


def _profile_chunk(settings: Settings, panel: object, i: int, previous: ClusterSet,
                   recluster: bool, pending: dict) -> dict:  # fmt: skip
    """Chunk ``i``'s periods, strengths and clusters: each series is assigned to the nearest
    stored cluster of its period; the shapes of groups to be fitted go to ``pending``
    (their cluster is filled in by ``_fit_pending``)."""
    res = detect_periods(panel.values, panel.mask, settings.candidate_periods, settings.min_acf)
    cluster = np.empty(panel.n_series, dtype=object)
    for p in np.unique(res.period):
        rows = np.flatnonzero(res.period == p)
        shapes = seasonal_shape(panel.values[rows], panel.mask[rows], panel.start_step,
                                shape_length(p, settings.period_default))  # fmt: skip
        if int(p) in previous and not recluster:
            cluster[rows] = previous.assign(int(p), shapes)
        else:
            pending.setdefault(int(p), []).append((i, rows, shapes))
    return {"series_id": panel.series_ids, "period": res.period, "strength": res.strength,
            "cluster_id": cluster}  # fmt: skip


def _fit_pending(settings: Settings, previous: ClusterSet, pending: dict, parts: list[dict],
                 recluster: bool) -> ClusterSet:  # fmt: skip
    """Fit the clusters of the period groups that were not assigned to stored ones (a
    group seen for the first time, or every group with ``recluster``) and write their
    labels into ``parts``; the stored groups are kept unless reclustering."""
    fitted = ClusterSet({} if recluster else dict(previous.groups))
    for p, items in sorted(pending.items()):
        labels = fitted.fit(p, np.concatenate([s for _, _, s in items]),
                            settings.max_cluster_size, settings.seed, previous)  # fmt: skip
        at = 0
        for i, rows, _ in items:
            parts[i]["cluster_id"][rows] = labels[at : at + len(rows)]
            at += len(rows)
    return fitted


def _warn_about_clusters(settings: Settings, sizes: dict[str, int], fitted: ClusterSet,
                         previous: ClusterSet) -> tuple[dict[str, int], list[str]]:  # fmt: skip
    """(oversized clusters, new clusters), each logged with what to run next."""
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
    return over, fresh


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
