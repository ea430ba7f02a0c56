"""Meta-training: a sample of each cluster's series, one model per cluster (through
``tsmeta.execution``: Ray or in-process), each saved as the cluster's next version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date

import numpy as np
import polars as pl

from tsmeta import progress
from tsmeta.clustering import period_of_cluster
from tsmeta.config import Settings
from tsmeta.data.io import iter_window_panels
from tsmeta.data.panel import Panel, freq_timedelta
from tsmeta.forecaster import FeatureSpec
from tsmeta.jobs.common import _window_start, engine_for, log, night_bounds
from tsmeta.meta.train import MetaConfig, MetaModel
from tsmeta.store.models import save_model
from tsmeta.store.writes import read_profile

# the calibration parts a causal night never reads (``Settings.causal``)
CAUSAL_WITHOUT = ("isolation", "onsets")


def meta_config(settings: Settings, **overrides: object) -> MetaConfig:
    """The meta-training config of ``settings`` (``overrides``: a flow's arguments; None
    keeps the setting). With ``settings.causal`` the calibration leaves out the parts a
    causal night never reads (NAB: 51.3 with them, 53.2 without)."""
    values = {
        "algorithm": settings.algorithm, "k": settings.k, "horizon": settings.horizon,
        "hidden": settings.hidden,
        "inner_steps": settings.inner_steps, "inner_lr": settings.inner_lr,
        "meta_batch": settings.meta_batch, "meta_steps": settings.meta_steps,
        "meta_lr": settings.meta_lr, "seed": settings.seed, "cut_every": settings.steps_per_day,
        "steps_per_day": settings.steps_per_day,
    }  # fmt: skip
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = MetaConfig(**values)  # type: ignore[arg-type]
    if settings.causal:  # calibrated as scored: a causal night reads neither (both read ahead)
        cfg = replace(cfg, without=tuple(dict.fromkeys((*cfg.without, *CAUSAL_WITHOUT))))
    return cfg


def k_for(settings: Settings, cluster_id: str, steps: int | None = None) -> int:
    """Support points of a cluster's series: ``settings.k``, or with ``k_rule="period"`` at
    least one period of the cluster (aperiodic: ``settings.k``), at most ``k_max``, where
    its training window of ``steps`` (None: enough) holds ``lag_periods`` + 1 periods: a
    week-long support with lag medians over 3 weeks before it cannot be meta-trained
    and calibrated on 3 weeks of data."""
    period = period_of_cluster(cluster_id)
    if settings.k_rule == "period" and period:
        if steps is None or steps >= (settings.lag_periods + 1) * period:
            return max(settings.k, min(period, settings.k_max))
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
    panels = _sample_panels(settings, profile, wanted, start, as_of, n_steps)
    jobs = [
        ClusterJob(cid, panels[cid].values, panels[cid].mask, panels[cid].start_step,
                   _spec_for(settings, cid).to_dict(),
                   {**cfg.__dict__, "k": config_overrides.get("k")
                    or k_for(settings, cid, _steps_held(panels[cid]))})
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
    return _save_models(settings, engine, results, run_id, begin, end)


def _steps_held(panel: Panel) -> int:
    """Steps from the first observed point of a training panel to its end."""
    seen = np.flatnonzero(panel.mask.any(axis=0))
    return int(panel.mask.shape[1] - seen[0]) if seen.size else 0


def _sample_panels(settings: Settings, profile: pl.DataFrame, wanted: list[str], start: date,
                   as_of: date, n_steps: int) -> dict[str, Panel]:  # fmt: skip
    """A sample of each cluster's series over [start, as_of) (at most
    ``train_series_per_cluster``: enough tasks, bounded memory), gathered from one chunked
    read of the window in which only the sampled series are kept."""
    rng = np.random.default_rng(settings.seed)
    begin, _ = night_bounds(start)
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
    return panels


def _save_models(settings: Settings, engine: object, results: dict, run_id: str, begin: object,
                 end: object) -> dict[str, dict]:  # fmt: skip
    """Each cluster's trained model saved as its next version, or its failure named."""
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
