"""Faults: a Ray worker dying mid-training, the database failing mid-write, backfills, reruns.

Real components throughout: Prefect's test harness, local Ray, the PostgreSQL server.
"""

from __future__ import annotations

import json
import os
from datetime import date, timedelta

import polars as pl
import pytest
import sqlalchemy as sa

from tsmeta import jobs
from tsmeta.config import Settings, load_settings
from tsmeta.jobs import score as scoring
from tsmeta.jobs.history import NightHistory, history_dir
from tsmeta.store.schema import anomalies, models, runs

LAST = date(2026, 11, 29)  # the tiny dataset's last day
COMPARED = [
    "series_id",
    "ts",
    "value",
    "forecast",
    "lower",
    "upper",
    "residual",
    "score",
    "direction",
    "cluster_id",
]


@pytest.fixture(scope="module")
def trained(tiny_dataset, pg_url, tmp_path_factory, prefect_harness, ray_local):
    """Profile and models (trained on the days before the last week) in a fresh PostgreSQL schema."""
    from pipelines.flows import meta_train, profile

    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("drop schema public cascade"))
        conn.execute(sa.text("create schema public"))
    engine.dispose()
    root, _ = tiny_dataset
    config = {
        "data_dir": str(tmp_path_factory.mktemp("faults")),
        "dataset_path": str(root),
        "database_url": pg_url,
    }
    as_of = LAST - timedelta(days=6)
    profile(as_of=as_of, config=config)
    assert meta_train(as_of=as_of, meta_steps=30, config=config)["status"] == "completed"
    return config


def night_rows(config: dict, night: date) -> pl.DataFrame:
    return jobs.read_night(load_settings(**config), night).select(COMPARED).sort("series_id", "ts")


def test_database_failure_mid_write_never_leaves_a_half_written_night(trained, monkeypatch):
    from pipelines import flows
    from tsmeta.store import night as night_writes

    night = LAST - timedelta(days=2)
    assert flows.nightly(night=night, config=trained)["status"] == "completed"
    clean = night_rows(trained, night)
    assert clean.height > 0

    real = night_writes._insert_anomalies
    failures = {"left": 10**6}

    def drop_connection_mid_write(conn, rows, progress=None):
        real(conn, rows.head(rows.height // 2))  # half the rows are in when the connection drops
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sa.exc.OperationalError(
                "COPY anomalies", {}, Exception("server closed the connection")
            )
        real(conn, rows.slice(rows.height // 2))

    monkeypatch.setattr(night_writes, "_insert_anomalies", drop_connection_mid_write)
    monkeypatch.setattr(flows, "write_night", flows.write_night.with_options(retry_delay_seconds=0))

    # the database keeps failing: retries exhausted, the run is marked failed, and the
    # night still holds exactly its previous complete rows
    with pytest.raises(sa.exc.OperationalError):
        flows.nightly(night=night, config=trained)
    assert night_rows(trained, night).equals(clean)
    engine = jobs.engine_for(load_settings(**trained))
    with engine.connect() as conn:
        last = conn.execute(
            sa.select(runs.c.status)
            .where(runs.c.flow == "nightly")
            .order_by(runs.c.started_at.desc())
        ).first()
    assert last.status == "failed"

    # a transient failure: the write task's retry completes the night, rows identical
    failures["left"] = 1
    assert flows.nightly(night=night, config=trained)["status"] == "completed"
    assert night_rows(trained, night).equals(clean)


def test_failed_first_write_of_a_night_then_rerun_completes_it(trained, monkeypatch):
    from pipelines import flows
    from tsmeta.store import night as night_writes

    night = LAST - timedelta(days=3)

    def always_down(conn, rows, progress=None):
        raise sa.exc.OperationalError(
            "COPY anomalies", {}, Exception("could not connect to server")
        )

    with monkeypatch.context() as m:
        m.setattr(night_writes, "_insert_anomalies", always_down)
        m.setattr(flows, "write_night", flows.write_night.with_options(retry_delay_seconds=0))
        with pytest.raises(sa.exc.OperationalError):
            flows.nightly(night=night, config=trained)
    assert night_rows(trained, night).height == 0  # nothing half-written
    assert flows.nightly(night=night, config=trained)["status"] == "completed"
    first = night_rows(trained, night)
    assert first.height > 0
    flows.nightly(night=night, config=trained)  # rerunning the night: identical rows
    assert night_rows(trained, night).equals(first)


def test_ray_worker_dying_during_meta_training_is_retried(trained, tmp_path, monkeypatch):
    from pipelines.flows import meta_train
    from tsmeta import execution

    marker = str(tmp_path / "worker-died")
    original = execution._train_one

    def dies_once(*args):  # shipped to the worker by value; kills the worker process once
        import os

        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return original(*args)

    monkeypatch.setattr(execution, "_train_one", dies_once)
    engine = jobs.engine_for(load_settings(**trained))
    with engine.connect() as conn:
        before = dict(
            conn.execute(
                sa.select(models.c.cluster_id, sa.func.count()).group_by(models.c.cluster_id)
            ).all()
        )
    res = meta_train(as_of=LAST - timedelta(days=6), meta_steps=20, config=trained)
    assert (tmp_path / "worker-died").exists()  # a worker really died
    assert res["status"] == "completed", res
    with engine.connect() as conn:
        after = dict(
            conn.execute(
                sa.select(models.c.cluster_id, sa.func.count()).group_by(models.c.cluster_id)
            ).all()
        )
    assert after == {cid: n + 1 for cid, n in before.items()}  # exactly one new version per cluster


def test_seven_night_backfill_is_resumable_and_reruns_are_identical(trained):
    from pipelines.flows import backfill

    start = LAST - timedelta(days=6)
    res = backfill(start=start, end=LAST, config=trained)
    assert res["status"] == "completed" and len(res["nights"]) == 7
    engine = jobs.engine_for(load_settings(**trained))
    with engine.connect() as conn:
        per_night = conn.execute(
            sa.select(sa.func.count())
            .select_from(anomalies)
            .where(anomalies.c.ts >= jobs.night_bounds(start)[0])
        ).scalar()
    assert per_night > 0

    again = backfill(start=start, end=LAST, config=trained)
    assert all(v.startswith("skipped") for v in again["nights"].values())

    # re-scoring with the same models leaves every night's rows identical
    assert set(backfill(start=start, end=LAST, force=True, config=trained)["nights"].values()) == {
        "completed"
    }
    snapshot = {d: night_rows(trained, start + timedelta(days=d)) for d in range(7)}
    assert set(backfill(start=start, end=LAST, force=True, config=trained)["nights"].values()) == {
        "completed"
    }
    for d, rows in snapshot.items():
        assert night_rows(trained, start + timedelta(days=d)).equals(rows)

    with pytest.raises(ValueError, match="empty date range"):
        backfill(start=LAST, end=start, config=trained)


def test_a_backfill_with_a_failed_night_scores_the_others_and_fails(trained, capsys, monkeypatch):
    """Prefect records the run Failed (a scheduled backfill's failure shows), after every
    night that could be scored was; the command line prints each night's outcome, exit 1."""
    from pipelines.flows import RunFailed, backfill
    from tsmeta.cli import main

    late = LAST + timedelta(days=1)  # no data for it
    state = backfill(start=LAST - timedelta(days=1), end=late, config=trained, return_state=True)
    assert state.is_failed() and f"1 of 3 night(s) failed: {late}" in state.message
    with pytest.raises(RunFailed) as caught:
        state.result()
    nights = caught.value.result["nights"]
    assert caught.value.result["failed"] == [str(late)]
    assert nights[str(late)].startswith("failed: NightDataMissing")
    assert all(v in ("completed", "skipped (already completed)") for k, v in nights.items()
               if k != str(late))  # fmt: skip
    assert night_rows(trained, LAST).height > 0

    for key, value in trained.items():
        monkeypatch.setenv(f"TSMETA_{key.upper()}", value)
    capsys.readouterr()
    assert main(["backfill", "--start", str(LAST), "--end", str(late)]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["failed"] == [str(late)] and "1 of 2 night(s) failed" in err


def test_training_where_every_cluster_fails_fails_the_flow(trained, monkeypatch):
    from pipelines.flows import RunFailed, meta_train
    from tsmeta import execution

    def broken(*args):  # shipped to the worker by value
        raise ValueError("broken training")

    monkeypatch.setattr(execution, "_train_one", broken)
    state = meta_train(as_of=LAST - timedelta(days=6), meta_steps=5, config=trained,
                       return_state=True)  # fmt: skip
    assert state.is_failed() and "the training of every cluster failed" in state.message
    with pytest.raises(RunFailed) as caught:
        state.result()
    assert caught.value.result["status"] == "failed" and caught.value.result["failed"]
    engine = jobs.engine_for(load_settings(**trained))
    with engine.connect() as conn:
        last = conn.execute(
            sa.select(runs.c.status, runs.c.error)
            .where(runs.c.flow == "meta_train")
            .order_by(runs.c.started_at.desc())
        ).first()
    assert last.status == "failed" and "the training of every cluster failed" in last.error


# the failure in a scoring worker, or in turning its result into rows (the main thread)
@pytest.mark.parametrize("where", ["_score_batch", "points_frame"])
def test_one_cluster_failing_in_scoring_leaves_the_others_and_reports_partial(
    trained, monkeypatch, where
):
    from pipelines import flows

    night = LAST - timedelta(days=4)
    assert flows.nightly(night=night, config=trained)["status"] == "completed"
    before = night_rows(trained, night)
    broken = before["cluster_id"].value_counts(sort=True)["cluster_id"][
        0
    ]  # a cluster with anomalies
    real = getattr(scoring, where)

    def fails_for_one(*args):
        cid = args[3]  # both take the cluster id fourth
        if cid == broken:
            raise RuntimeError(f"cluster {cid}: out of memory")
        return real(*args)

    monkeypatch.setattr(scoring, where, fails_for_one)
    res = flows.nightly(night=night, config=trained)
    assert res["status"] == "partial" and res["failed_clusters"] == [broken]
    assert "out of memory" in res["clusters"][broken]["error"]
    after = night_rows(trained, night)
    # the broken cluster keeps its previous rows; the others were re-scored (same models: same rows)
    assert after.equals(before)


def test_scoring_on_ray_writes_the_same_rows_as_in_process(trained):
    from pipelines.flows import nightly

    night = LAST - timedelta(days=5)
    assert nightly(night=night, config={**trained, "executor": "local"})["status"] == "completed"
    local = night_rows(trained, night)
    res = nightly(
        night=night, config={**trained, "executor": "ray", "chunk_series": 64}
    )  # several chunks
    assert res["status"] == "completed" and res["series_scored"] == 300
    assert night_rows(trained, night).equals(local)


def test_scoring_in_small_batches_writes_the_same_rows(trained):
    from pipelines.flows import nightly

    night = LAST - timedelta(days=6)
    assert nightly(night=night, config=trained)["status"] == "completed"
    whole = night_rows(trained, night)
    res = nightly(night=night, config={**trained, "read_chunk_rows": 2_000, "chunk_series": 40})
    assert res["status"] == "completed" and res["series_scored"] == 300
    assert night_rows(trained, night).equals(whole)


def test_bounded_buffers_score_the_same_rows_in_the_same_order(trained, monkeypatch):
    """Past ``BUFFERED_BYTES`` of series waiting for a full batch, the fullest cluster's is
    submitted as it is: smaller batches, every row and its order as before."""
    night = LAST - timedelta(days=5)
    settings = load_settings(**{**trained, "chunk_series": 10_000})  # one batch per cluster
    real_read, real_stack = scoring.iter_window_panels, scoring._stack

    def in_chunks_of_ten(*args, **kwargs):  # many small reads, as a large dataset gives
        for panel in real_read(*args, **kwargs):
            yield from panel.chunks(10)

    submitted = []

    def recorded(parts):
        submitted.append(sum(p.n_series for p in parts))
        return real_stack(parts)

    monkeypatch.setattr(scoring, "iter_window_panels", in_chunks_of_ten)
    monkeypatch.setattr(scoring, "_stack", recorded)
    whole, w_stats = jobs.score_night(settings, night, "a", "all")
    assert len(submitted) == len(w_stats["scored_clusters"])  # each cluster's series at once
    submitted.clear()
    monkeypatch.setattr(scoring, "BUFFERED_BYTES", 1)  # every buffer submitted after each read
    bounded, b_stats = jobs.score_night(settings, night, "b", "all")
    assert max(submitted) <= 10 and len(submitted) >= 300 // 10
    assert bounded.height == whole.height == w_stats["points_scored"] > 300 * 20
    assert bounded.equals(whole)
    assert b_stats["clusters"] == w_stats["clusters"]


def test_batches_scored_at_once_give_a_serial_runs_rows_in_its_order(trained, monkeypatch):
    import threading

    night = LAST - timedelta(days=6)
    # a batch per cluster, and no history warm-up (its nights' batches would count too)
    small = {**trained, "read_chunk_rows": 2_000, "chunk_series": 16, "history_warmup_nights": 0}
    serial, s_stats = jobs.score_night(load_settings(**small, score_workers=1), night, "a", "all")
    real, threads = scoring._score_batch, []

    def recorded(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(scoring, "_score_batch", recorded)
    threaded, t_stats = jobs.score_night(load_settings(**small, score_workers=3), night, "b", "all")
    # the batches ran on the pool's threads, several of them (the scored day's rows are
    # collected on the calling thread in the order read)
    assert len(threads) == len(s_stats["scored_clusters"]) >= 2
    assert all(t.startswith("tsmeta-score") for t in threads) and len(set(threads)) > 1
    assert threaded.height == serial.height == s_stats["points_scored"] > 300 * 20
    assert threaded.equals(serial)  # the same rows, the same order
    assert t_stats["clusters"] == s_stats["clusters"]


def test_scoring_workers_follow_the_setting_or_the_threads(tmp_path):
    auto = load_settings(data_dir=str(tmp_path), device="cpu")
    assert jobs.score_workers(auto, 1) == len(os.sched_getaffinity(0))  # one per core
    assert jobs.score_workers(auto, 0) == 1  # torch's threads already take every core
    assert jobs.score_workers(load_settings(data_dir=str(tmp_path), score_workers=3), 0) == 3
    on_ray = load_settings(data_dir=str(tmp_path), score_workers=3, executor="ray")
    assert jobs.score_workers(on_ray, 1) == 1  # Ray workers are the parallelism


def test_a_cluster_without_a_model_is_counted_logged_and_named_with_the_fix(
    trained, monkeypatch, capsys, caplog
):
    from tsmeta.cli import main

    night = LAST - timedelta(days=3)
    real = scoring.load_latest_models
    missing = sorted(real(jobs.engine_for(load_settings(**trained))))[0]
    monkeypatch.setattr(
        scoring,
        "load_latest_models",
        lambda engine, **kw: {c: m for c, m in real(engine, **kw).items() if c != missing},
    )
    for key, value in trained.items():
        monkeypatch.setenv(f"TSMETA_{key.upper()}", value)
    assert main(["nightly", "--night", str(night)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["status"] == "partial" and res["failed_clusters"] == [missing]
    n_missing = res["clusters"][missing]["series"]
    assert res["no_model_series"] == n_missing > 0
    # every series with a model went through scoring; a few may have had too few or stuck
    # support points (basis unscored / constant) and are counted, not scored
    assert sum(res["basis"].values()) == 300 - n_missing
    not_scored = res["basis"]["unscored"] + res["basis"]["constant"]
    assert res["series_scored"] == 300 - n_missing - not_scored
    # one warning on the job's log (stderr in a terminal, the flow run's log under Prefect;
    # pytest's handlers keep it from capsys), naming the cluster, its size and the fix
    (warning,) = [r.getMessage() for r in caplog.records
                  if r.name == "tsmeta" and r.levelname == "WARNING" and "no model" in r.getMessage()]  # fmt: skip
    assert f"cluster {missing} ({n_missing:,} series) has no model yet" in warning
    assert f"tsmeta train --cluster {missing}" in warning


def _last_nightly(config: dict):
    engine = jobs.engine_for(load_settings(**config))
    with engine.connect() as conn:
        return conn.execute(
            sa.select(runs.c.status, runs.c.error, runs.c.parameters)
            .where(runs.c.flow == "nightly")
            .order_by(runs.c.started_at.desc())
        ).first()


def _daily_count_nights(config: dict) -> set[str]:
    from tsmeta.store.schema import anomaly_daily_counts

    engine = jobs.engine_for(load_settings(**config))
    with engine.connect() as conn:
        nights = conn.execute(sa.select(anomaly_daily_counts.c.night).distinct()).scalars()
        return {str(n)[:10] for n in nights}


def test_a_night_without_data_fails_writes_nothing_and_keeps_the_latest_night(
    trained, monkeypatch, capsys
):
    from pipelines import flows
    from tsmeta.cli import main
    from tsmeta.store.queries import latest_night

    assert flows.nightly(night=LAST, config=trained)["status"] == "completed"
    good = night_rows(trained, LAST)
    assert good.height > 0
    before = _daily_count_nights(trained)

    # the schedule's run the morning after the data stopped (no night given: today minus
    # the lag, here pinned to the day after the last day of data)
    late = LAST + timedelta(days=1)
    monkeypatch.setattr(jobs, "default_night", lambda settings: late)
    with pytest.raises(jobs.NightDataMissing, match=f"no data for night {late}"):
        flows.nightly(config=trained)
    last = _last_nightly(trained)
    assert last.status == "failed" and last.parameters["night"] == str(late)
    assert last.error.count("\n") == 0 and "nothing was scored or written" in last.error
    assert _daily_count_nights(trained) == before  # no zero-count rows for the missing night
    assert latest_night(jobs.engine_for(load_settings(**trained))) == LAST

    # what analysts read the morning after still shows the last good night
    for key, value in trained.items():
        monkeypatch.setenv(f"TSMETA_{key.upper()}", value)
    capsys.readouterr()
    assert main(["anomalies", "--format", "json", "--top", "1000"]) == 0
    shown = pl.read_json(capsys.readouterr().out.encode())
    assert shown.height == good.height and shown["ts"].str.slice(0, 10).unique().to_list() == [
        str(LAST)
    ]
    # the command line says the same in one line, exit 2
    assert main(["nightly", "--night", str(late)]) == 2
    assert f"no data for night {late}" in capsys.readouterr().err


def test_a_night_with_most_series_missing_fails_and_keeps_its_previous_rows(
    trained, tmp_path, monkeypatch
):
    """Data that arrived for a few series only: below TSMETA_MIN_SERIES_SHARE, nothing is
    written and the night's earlier complete rows stay."""
    import shutil

    from pipelines import flows
    from tsmeta.data.io import write_partitioned

    night = LAST - timedelta(days=1)
    assert flows.nightly(night=night, config=trained)["status"] == "completed"
    complete = night_rows(trained, night)
    partial_root = tmp_path / "dataset"
    shutil.copytree(trained["dataset_path"], partial_root)
    day = partial_root / f"date={night}"
    frame = pl.read_parquet(day)
    shutil.rmtree(day)
    keep = frame.get_column("series_id").unique().sort().head(60)  # 60 of 300 series arrived
    write_partitioned(frame.filter(pl.col("series_id").is_in(keep.to_list())), partial_root)
    late = {**trained, "dataset_path": str(partial_root)}
    with pytest.raises(jobs.NightDataMissing, match="60 of 300 profiled series"):
        flows.nightly(night=night, config=late)
    assert _last_nightly(trained).status == "failed"
    assert night_rows(trained, night).equals(complete)
    # a lower bar accepts it (an operator's explicit choice): the night is re-scored
    res = flows.nightly(night=night, config={**late, "min_series_share": 0.1})
    assert res["status"] == "completed" and res["series_with_data"] == 60


def test_the_default_night_is_today_minus_the_lag_in_the_configured_zone(tmp_path):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    for tz, lag in (("UTC", 1), ("Pacific/Auckland", 2), ("America/Los_Angeles", 0)):
        settings = load_settings(data_dir=str(tmp_path), timezone=tz, night_lag_days=lag)
        today = datetime.now(ZoneInfo(tz)).date()
        assert jobs.default_night(settings) in (today - timedelta(days=lag),
                                                today - timedelta(days=lag - 1))  # fmt: skip


def test_reading_only_the_days_the_models_read_gives_the_same_rows(trained):
    """Nightly scoring reads the support, the night and their lags (weeks back), not every
    day between them (Settings.read_needed_days): every scored point is the same."""
    night = LAST
    some, s_stats = jobs.score_night(load_settings(**trained), night, "a", "all")
    every, e_stats = jobs.score_night(
        load_settings(**trained, read_needed_days=False), night, "b", "all"
    )
    assert some.height == e_stats["points_scored"] > 300 * 20
    assert some.equals(every)
    assert s_stats["clusters"] == e_stats["clusters"]


def test_a_shared_drop_is_one_event_per_cluster_and_reruns_replace_it(trained, tmp_path):
    """Every series drops for the same five hours (an upstream outage; on the holiday
    calendar, a holiday): each cluster records the drop as a shared event of kind holiday,
    its flagged points carry the event's id, the report lists it first and leaves its
    points out of the per-series list, and re-running the night replaces it exactly."""
    import shutil

    from pipelines import flows
    from tsmeta.data.io import write_partitioned
    from tsmeta.report import write_report
    from tsmeta.store.queries import query_events

    night = LAST - timedelta(days=2)
    root = tmp_path / "dataset"
    shutil.copytree(trained["dataset_path"], root)
    day = root / f"date={night}"
    frame = pl.read_parquet(day)
    shutil.rmtree(day)
    hour = pl.col("ts").dt.hour()
    spread = pl.col("value").std().over("series_id")
    write_partitioned(frame.with_columns(
        pl.when((hour >= 10) & (hour < 15)).then(pl.col("value") - 8 * spread)
        .otherwise(pl.col("value")).alias("value")), root)  # fmt: skip
    config = {**trained, "dataset_path": str(root), "holidays": [str(night)]}
    assert flows.nightly(night=night, config=config)["status"] == "completed"
    settings = load_settings(**config)
    engine = jobs.engine_for(settings)
    shared = query_events(engine, night, night)
    assert shared.height >= 1 and set(shared.get_column("kind")) == {"holiday"}
    assert set(shared.get_column("direction")) == {"down"}
    # (centred window medians may flag an hour either side of the drop)
    assert (shared.get_column("start_ts").dt.hour() >= 9).all()
    assert (shared.get_column("end_ts").dt.hour() <= 16).all()
    rows = jobs.read_night(settings, night)
    members = rows.filter(pl.col("event_id").is_not_null())
    assert members.height == shared.get_column("n_points").sum() > 100
    assert set(members.get_column("event_id")) == set(shared.get_column("event_id"))
    # the members are left out of their series' own histories (the state the next night reads)
    from tsmeta.jobs.history import history_dir

    states = [pl.read_parquet(history_dir(settings) / f"night={d}.parquet")
              for d in (night - timedelta(days=1), night)]  # fmt: skip
    grew = states[1].join(states[0], on="series_id", suffix="_0").select(
        "series_id", (pl.col("count") - pl.col("count_0")).alias("grew"))  # fmt: skip
    per = members.group_by(pl.col("series_id").cast(pl.String)).len().join(grew, on="series_id")
    assert (per["grew"] <= 24 - per["len"]).all() and (per["grew"] == 24 - per["len"]).any()
    page = write_report(settings, night, tmp_path / "r.html")["path"]
    html = open(page).read()
    assert html.index("Shared events") < html.index("Top anomalies")
    assert shared.get_column("event_id")[0].split("/")[0] in html
    assert flows.nightly(night=night, config=config)["status"] == "completed"
    assert query_events(engine, night, night).sort("event_id").equals(shared.sort("event_id"))
    assert jobs.read_night(settings, night).select(COMPARED + ["event_id"]).sort(
        "series_id", "ts").equals(rows.select(COMPARED + ["event_id"]).sort("series_id", "ts"))  # fmt: skip


def test_a_replay_carrying_the_residual_history_flags_what_the_nightly_runs_stored(trained):
    """Each night reads the history saved after the night before; a replay carries its
    own from night to night, saves none, and flags the same points; the points the night
    before flagged and held out change only their own series' flags; without the history
    no point is judged an alert."""
    settings = load_settings(**trained)
    nights = [LAST - timedelta(days=d) for d in (2, 1, 0)]
    for night in nights:
        jobs.run_night(settings, night, f"history-{night}")
    folder = history_dir(settings)
    saved = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {f"night={n.isoformat()}.parquet" for n in nights} <= set(saved)
    replayed = {n: f for n, f, _ in jobs.replay(settings, nights[0], LAST, "replay")}
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == saved  # nothing saved
    alerts = 0
    for night in nights:
        cols = ("series_id", "ts", "alert")
        stored = jobs.read_night(settings, night).select(cols).sort("series_id", "ts")
        flags = replayed[night].filter("flag").select(cols).sort("series_id", "ts")
        assert flags.equals(stored)  # the same points, the same alerts
        assert stored["alert"].null_count() == 0
        alerts += stored["alert"].sum()
    assert 0 < alerts < sum(jobs.read_night(settings, n).height for n in nights)
    assert not replayed[LAST].filter(~pl.col("flag"))["alert"].any()  # alerts are flagged points
    # the points held out of the next night's supports change only the series they are of
    held = NightHistory.stored(settings, LAST).held
    assert held.height and held.equals(pl.read_parquet(folder / f"held-night={nights[1]}.parquet"))
    same = load_settings(**trained, hold_flagged=False)
    kept, _ = jobs.run_night(same, LAST, "not-held", write=False, keep="all")
    moved = (kept.select("series_id", "ts", "flag")
             .join(replayed[LAST].select("series_id", "ts", "flag"), on=["series_id", "ts"])
             .filter(pl.col("flag") != pl.col("flag_right")))  # fmt: skip
    assert set(moved["series_id"]) <= set(held["series_id"])
    plain = load_settings(**trained, own_history=False)
    without, _ = jobs.run_night(plain, LAST, "no-history", write=False, keep="all")
    assert without["alert"].null_count() == without.height  # no history: not judged


def test_a_first_night_is_judged_against_a_history_built_from_the_nights_before(trained, tmp_path):
    """With no residual history saved (a deployment's first night) the night first scores
    the ``history_warmup_nights`` nights before it, writing no rows for them, and saves the
    history they built as the state after the last of them (a re-run reads it); a replay
    builds the same history itself, saving nothing, so both flag the same points. Without
    the warm-up the night is judged by the cluster's tails alone and its state holds one
    night."""
    import shutil
    from pathlib import Path

    fresh = {
        **trained,
        "data_dir": str(tmp_path),
        "model_dir": str(Path(trained["data_dir"]) / "models"),
        "history_warmup_nights": Settings.model_fields["history_warmup_nights"].default,
    }
    settings = load_settings(**fresh)
    engine = sa.create_engine(trained["database_url"])

    def stored_rows() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(anomalies)).scalar_one()

    before = stored_rows()
    nightly, _ = jobs.run_night(settings, LAST, "warm", write=False, keep="all")
    assert stored_rows() == before  # the warm-up nights wrote nothing (nor did this night)
    saved = {p.name for p in history_dir(settings).iterdir()}
    # the night's state, the shared events, the clusters' counts and the held points for
    # the nights after it, and the same after the last warm-up night
    before = LAST - timedelta(days=1)
    assert saved == {f"{kind}night={d.isoformat()}.parquet"
                     for kind in ("", "events-", "combine-", "held-") for d in (before, LAST)}  # fmt: skip
    state = pl.read_parquet(history_dir(settings) / f"night={LAST.isoformat()}.parquet")
    warm = settings.history_warmup_nights
    assert warm >= 1 and state["count"].max() == (warm + 1) * 24  # the nights before and it
    state = pl.read_parquet(history_dir(settings) / f"night={before.isoformat()}.parquet")
    assert state["count"].max() == warm * 24
    again, _ = jobs.run_night(settings, LAST, "again", write=False, keep="all")  # reads it
    cols = ["series_id", "ts", "flag", "alert"]
    assert again.select(cols).sort("series_id", "ts").equals(
        nightly.select(cols).sort("series_id", "ts"))  # fmt: skip
    shutil.rmtree(history_dir(settings))
    _, replayed, _ = next(iter(jobs.replay(settings, LAST, LAST, "replay")))
    assert not history_dir(settings).exists() or not any(history_dir(settings).iterdir())
    cols = ["series_id", "ts", "flag", "alert"]
    assert (
        replayed.select(cols)
        .sort("series_id", "ts")
        .equals(nightly.select(cols).sort("series_id", "ts"))
    )
    cold = load_settings(**{**fresh, "history_warmup_nights": 0})
    alone, _ = jobs.run_night(cold, LAST, "cold", write=False, keep="all")
    state = pl.read_parquet(history_dir(settings) / f"night={LAST.isoformat()}.parquet")
    assert state["count"].max() == 24
    plain, _ = jobs.run_night(load_settings(**{**fresh, "own_history": False}), LAST, "plain",
                              write=False, keep="all")  # fmt: skip
    cols = ["series_id", "ts", "flag"]
    assert alone.select(cols).sort("series_id", "ts").equals(
        plain.select(cols).sort("series_id", "ts"))  # the cluster's tails alone  # fmt: skip
    engine.dispose()


def test_a_night_too_early_for_every_model_fails_per_cluster_and_writes_nothing(trained):
    """The dataset's second day: no model has the window it reads. Every cluster fails with
    its own reason, the rows are an empty frame with the anomaly columns, and writing the
    night writes nothing (not a complaint about missing columns)."""
    from tsmeta.data.io import dataset_dates
    from tsmeta.jobs.rows import ROW_SCHEMA

    settings = load_settings(**{**trained, "own_history": False})
    night = dataset_dates(settings.dataset_path)[1]
    frame, stats = jobs.score_night(settings, night, "too-early")
    assert stats["scored_clusters"] == [] and stats["clusters"]
    assert all("too short" in c["error"] for c in stats["clusters"].values())
    assert frame.height == 0 and dict(frame.schema) == ROW_SCHEMA
    assert jobs.write_night(settings, frame, night, "too-early", stats["scored_clusters"]) == 0
    scored, _ = jobs.score_night(settings, LAST, "scored")  # a scored night's rows: the same
    assert scored.height and dict(scored.schema) == ROW_SCHEMA
