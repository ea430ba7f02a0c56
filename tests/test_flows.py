"""End to end through the real flows: Prefect test harness, local Ray, a real database."""

from datetime import date
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from tsmeta import jobs
from tsmeta.config import load_settings
from tsmeta.data.synthetic import read_labels
from tsmeta.evaluation import detection_quality
from tsmeta.jobs.threads import torch_threads
from tsmeta.store.schema import anomalies, clusters, models, runs

NIGHT = date(2026, 11, 29)  # the tiny dataset's last day


@pytest.fixture
def config(tiny_dataset, tmp_path, db_url):
    root, _ = tiny_dataset
    return {"data_dir": str(tmp_path), "dataset_path": str(root), "database_url": db_url}


def test_in_process_scoring_sets_its_torch_threads_and_restores_them():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with torch_threads(0):  # 0: left as they are
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), torch_threads(1):
            raise RuntimeError("a failed night")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_scoring_threads_follow_the_setting_or_the_models(tmp_path):
    from tsmeta.forecaster import FeatureSpec
    from tsmeta.meta.train import MetaConfig, MetaModel

    def model(algorithm):
        cfg = MetaConfig(algorithm=algorithm)
        return MetaModel({}, FeatureSpec(24), cfg, None, {})

    anil, maml = {"a": (1, model("anil"))}, {"a": (1, model("anil")), "b": (1, model("maml"))}
    auto = load_settings(data_dir=str(tmp_path))
    assert jobs.score_threads(auto, anil) == 1  # head-only steps: one thread
    assert jobs.score_threads(auto, {"a": (1, model("ridge"))}) == 1  # the closed-form head too
    assert jobs.score_threads(auto, maml) == 0  # MAML's matrix products use every core
    assert jobs.score_threads(load_settings(data_dir=str(tmp_path), score_threads=3), maml) == 3
    on_ray = load_settings(data_dir=str(tmp_path), score_threads=3, executor="ray")
    assert jobs.score_threads(on_ray, anil) == 0  # Ray workers set their own


def test_profile_train_nightly_end_to_end(config, prefect_harness, ray_local):
    import torch

    from pipelines.flows import meta_train, nightly, profile

    threads = torch.get_num_threads()
    prof = profile(as_of=NIGHT, config=config)
    assert prof["status"] == "completed" and prof["series"] == 300
    assert (
        set(prof["clusters"]) <= {"p24-0", "p168-0", "aperiodic-0"} and len(prof["clusters"]) >= 2
    )

    trained = meta_train(as_of=NIGHT, meta_steps=30, config=config)
    assert trained["status"] == "completed", trained
    assert all(r["version"] == 1 for r in trained["clusters"].values())

    first = nightly(night=NIGHT, config=config)
    assert first["status"] == "completed"
    assert first["series_scored"] == 300 and first["flagged"] > 0
    assert first["written"] == first["flagged"]

    settings = load_settings(**config)
    engine = jobs.engine_for(settings)
    with engine.connect() as conn:
        n_rows = conn.execute(sa.select(sa.func.count()).select_from(anomalies)).scalar()
        assert n_rows == first["flagged"]
        assert conn.execute(sa.select(sa.func.count()).select_from(models)).scalar() == len(
            prof["clusters"]
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(clusters)).scalar() == len(
            prof["clusters"]
        )

    # the night re-run replaces its rows: same count, no duplicates, the new run owns them
    second = nightly(night=NIGHT, config=config)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(anomalies)).scalar() == n_rows
        owners = set(conn.execute(sa.select(anomalies.c.run_id).distinct()).scalars())
        statuses = dict(conn.execute(sa.select(runs.c.flow, runs.c.status)).all())
    assert owners == {second["run_id"]}
    assert statuses == {"profile": "completed", "meta_train": "completed", "nightly": "completed"}

    # detections line up with the generator's labels better than chance
    stored = jobs.read_night(settings, NIGHT)
    start, end = jobs.night_bounds(NIGHT)
    q = detection_quality(
        stored.select("series_id", "ts"), read_labels(config["dataset_path"]), start, end
    )
    labelled_share = q["events"] * 3 / (300 * 24)  # rough share of anomalous points
    assert q["precision"] > 3 * labelled_share
    assert set(stored.get_column("severity")) <= {"minor", "major", "critical"}
    assert set(stored.get_column("basis")) <= {"adapted", "partial", "fallback"}
    assert sum(second["basis"].values()) == 300

    # replay: every point of a date range, nothing written; its flags are the stored ones
    nights = list(jobs.replay(settings, date(2026, 11, 28), NIGHT, "replay-test"))
    assert [n for n, _, _ in nights] == [date(2026, 11, 28), NIGHT]
    for _, frame, stats in nights:
        assert frame.height == stats["points_scored"] > 300 * 20
        assert frame.get_column("flag").sum() == stats["flagged"]
        assert frame.filter(~pl.col("flag")).get_column("severity").null_count() == (
            frame.height - stats["flagged"]
        )
    # the stored night built its residual history from the night before it (its warm-up)
    # and saved it as that night's state; replays save none
    before = date(2026, 11, 28)
    assert sorted(p.name for p in (Path(config["data_dir"]) / "history").iterdir()) == sorted(
        f"{kind}night={d.isoformat()}.parquet"  # the history, the clusters' counts, the events,
        for kind in ("", "combine-", "events-", "held-") for d in (before, NIGHT)  # held points
    )  # fmt: skip
    ((_, alone, _),) = jobs.replay(settings, NIGHT, NIGHT, "replay-test")
    last = alone.filter("flag").sort("series_id", "ts")
    assert last.select("series_id", "ts").equals(
        stored.sort("series_id", "ts").select("series_id", "ts")
    )
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(anomalies)).scalar() == n_rows
    with pytest.raises(ValueError, match="empty date range"):
        next(jobs.replay(settings, NIGHT, date(2026, 11, 28), "x"))
    engine.dispose()
    assert torch.get_num_threads() == threads  # scoring's own thread count was restored


def test_nightly_without_models_fails_and_is_recorded(tiny_dataset, tmp_path, prefect_harness):
    from pipelines.flows import nightly, profile

    root, _ = tiny_dataset
    config = {"data_dir": str(tmp_path), "dataset_path": str(root)}
    profile(as_of=NIGHT, config=config)
    with pytest.raises(LookupError, match="tsmeta train"):
        nightly(night=NIGHT, config=config)
    engine = jobs.engine_for(load_settings(**config))
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs.c.status, runs.c.error).where(runs.c.flow == "nightly")
        ).one()
    assert row.status == "failed" and "tsmeta train" in row.error
