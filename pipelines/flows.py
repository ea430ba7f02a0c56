"""Prefect flows: profile, meta_train, nightly. Orchestration only.

Each task is a thin wrapper over one ``tsmeta.jobs`` call; each flow records itself in the
``runs`` table (running -> completed / partial / failed). Retries only where a retry can
help: database writes. Bad input fails at once.
"""

from __future__ import annotations

import traceback
import uuid
from datetime import date, timedelta

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tsmeta import jobs
from tsmeta.config import Settings, load_settings
from tsmeta.store.writes import completed_nights, finish_run, start_run

__all__ = ["profile", "meta_train", "nightly", "backfill", "RunFailed"]


class RunFailed(RuntimeError):
    """A flow that ran to its end without doing what it was asked (every cluster's
    training failed; a night of a backfill failed). Raised at its end, so that Prefect
    records the run as Failed (a schedule's failure shows, and alerts fire) after the
    work that could be done was done; ``result`` holds what the flow would have returned."""

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = result


def _run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or uuid.uuid4())


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_start(settings: Settings, flow_name: str, parameters: dict) -> str:
    return start_run(jobs.engine_for(settings), flow_name, parameters, _run_id())


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_finish(settings: Settings, run_id: str, status: str, counts: dict | None = None,
                  timings: dict | None = None, error: str | None = None) -> None:  # fmt: skip
    finish_run(jobs.engine_for(settings), run_id, status, counts, timings, error)


@task(cache_policy=NO_CACHE)
def profile_series(settings: Settings, as_of: date, run_id: str, recluster: bool) -> dict:
    return jobs.profile_series(settings, as_of, run_id, recluster)


@task(cache_policy=NO_CACHE)
def train_models(settings: Settings, as_of: date, run_id: str, clusters: list[str] | None,
                 overrides: dict) -> dict:  # fmt: skip
    log = get_run_logger()

    def report(cid: str, res: object) -> None:
        if isinstance(res, BaseException):
            log.error("cluster %s failed: %s", cid, res)
        else:
            m = res["metrics"]  # type: ignore[index]
            log.info("cluster %s trained: %d series, val query MSE %.4f (unadapted %.4f), %.1fs",
                     cid, m["n_series"], m["val_query_mse_adapted"], m["val_query_mse_unadapted"],
                     m["seconds"])  # fmt: skip

    return jobs.train_models(settings, as_of, run_id, clusters, on_done=report, **overrides)


@task(cache_policy=NO_CACHE)
def score_night(settings: Settings, night: date, run_id: str):  # noqa: ANN201
    return jobs.score_night(settings, night, run_id)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def write_night(settings: Settings, frame, night: date, run_id: str, clusters: list[str],  # noqa: ANN001
                shared=None) -> int:  # noqa: ANN001  # fmt: skip
    return jobs.write_night(settings, frame, night, run_id, clusters, shared)


def _recorded(flow_name: str, settings: Settings, params: dict, body) -> dict:  # noqa: ANN001
    """Run ``body(run_id)`` between a 'running' and a final runs-table record."""
    run_id = record_start(settings, flow_name, params)
    try:
        status, counts = body(run_id)
    except Exception as exc:
        record_finish(
            settings, run_id, "failed", error="".join(traceback.format_exception_only(exc)).strip()
        )
        raise
    error = counts.pop("error", None) if status == "failed" else None
    record_finish(settings, run_id, status, counts=counts,
                  timings={"seconds": counts.get("seconds")}, error=error)  # fmt: skip
    result = {"run_id": run_id, "status": status, **counts}
    if status == "failed":  # the body ran to its end, but nothing it was asked for succeeded
        raise RunFailed(f"{flow_name}: {error or 'nothing succeeded'}", result)
    return result


@flow(name="profile")
def profile(as_of: date | None = None, recluster: bool = False, config: dict | None = None) -> dict:
    """Detect periods and assign clusters on the days before ``as_of`` (default: today).

    Series join the nearest stored cluster of their period; ``recluster`` refits all
    clusters (models of clusters that changed need `meta_train` again).
    """
    settings = load_settings(**(config or {}))
    as_of = as_of or jobs.default_night(settings) + timedelta(days=1)
    params = {"as_of": str(as_of), "recluster": recluster, "config": config or {}}
    return _recorded("profile", settings, params,
                     lambda rid: ("completed", profile_series(settings, as_of, rid, recluster)))  # fmt: skip


@flow(name="meta_train")
def meta_train(
    as_of: date | None = None,
    clusters: list[str] | None = None,
    algorithm: str | None = None,
    meta_steps: int | None = None,
    config: dict | None = None,
) -> dict:
    """Meta-train one model per cluster (all, or those named) on the days before ``as_of``.
    ``algorithm`` (default: the settings', ``TSMETA_ALGORITHM``) is one of
    ``tsmeta.meta.ALGORITHMS``."""
    settings = load_settings(**(config or {}))
    as_of = as_of or jobs.default_night(settings) + timedelta(days=1)
    params = {"as_of": str(as_of), "clusters": clusters, "algorithm": algorithm,
              "meta_steps": meta_steps, "config": config or {}}  # fmt: skip

    def body(run_id: str) -> tuple[str, dict]:
        res = train_models(settings, as_of, run_id, clusters,
                           {"algorithm": algorithm, "meta_steps": meta_steps})  # fmt: skip
        failed = sorted(c for c, r in res.items() if "error" in r)
        status = "completed" if not failed else ("failed" if len(failed) == len(res) else "partial")
        counts = {"clusters": res, "failed": failed}
        if status == "failed":
            counts["error"] = f"the training of every cluster failed: {', '.join(failed)}"
        return status, counts

    return _recorded("meta_train", settings, params, body)


@flow(name="nightly")
def nightly(night: date | None = None, config: dict | None = None) -> dict:
    """Adapt, score and write the anomalies of one night (default: today minus
    ``TSMETA_NIGHT_LAG_DAYS``, i.e. yesterday).

    A night whose data has not arrived (no partition, or fewer than
    ``TSMETA_MIN_SERIES_SHARE`` of the profiled series with a point in it) fails with
    ``NightDataMissing`` and writes nothing, so the analysts' latest night stays the last
    good one.
    """
    settings = load_settings(**(config or {}))
    night = night or jobs.default_night(settings)
    params = {"night": str(night), "config": config or {}}

    def body(run_id: str) -> tuple[str, dict]:
        frame, stats = score_night(settings, night, run_id)
        jobs.require_night_data(settings, night, stats)
        shared, frame = jobs.find_events(settings, night, frame, stats)
        stats["written"] = write_night(settings, frame, night, run_id, stats["scored_clusters"],
                                       shared)  # fmt: skip
        failed = sorted(c for c, v in stats["clusters"].items() if "error" in v)
        partial = failed or stats["no_model_series"] or stats["unprofiled_series"]
        return ("partial" if partial else "completed"), {**stats, "failed_clusters": failed}

    return _recorded("nightly", settings, params, body)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def nights_done(settings: Settings) -> set[str]:
    return completed_nights(jobs.engine_for(settings))


@flow(name="backfill")
def backfill(start: date, end: date, force: bool = False, config: dict | None = None) -> dict:
    """Score the nights ``start..end`` (inclusive) one by one, as ``nightly`` subflows.

    Resumable: nights whose latest nightly run completed are skipped unless ``force``; a
    night that fails is recorded and the next nights still run, and the backfill then
    fails (``RunFailed``, its result attached): run it again to retry the failed nights.
    """
    if end < start:
        raise ValueError(f"empty date range: end {end} is before start {start}")
    settings = load_settings(**(config or {}))
    done = set() if force else nights_done(settings)
    outcome: dict[str, str] = {}
    night = start
    while night <= end:
        key = night.isoformat()
        if key in done:
            outcome[key] = "skipped (already completed)"
        else:
            try:
                outcome[key] = nightly(night=night, config=config)["status"]
            except Exception as exc:  # noqa: BLE001 - recorded; the other nights go on
                outcome[key] = f"failed: {type(exc).__name__}: {exc}"
        night += timedelta(days=1)
    failed = sorted(k for k, v in outcome.items() if v.startswith("failed"))
    result = {"nights": outcome, "failed": failed, "status": "partial" if failed else "completed"}
    if failed:
        raise RunFailed(f"backfill: {len(failed)} of {len(outcome)} night(s) failed: "
                        f"{', '.join(failed)}", result)  # fmt: skip
    return result
