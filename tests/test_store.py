from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
import torch

from tsmeta.forecaster import FeatureSpec, init_params
from tsmeta.meta.train import MetaConfig, MetaModel
from tsmeta.scoring import TailModel
from tsmeta.store.models import load_latest_models, save_model
from tsmeta.store.schema import anomalies, anomaly_daily_counts, create_engine, create_schema, runs
from tsmeta.store.writes import finish_run, read_profile, replace_night, start_run, write_profile

NIGHT = datetime(2026, 11, 14, tzinfo=UTC)


def anomaly_frame(n: int, cluster: str = "p24", shift: float = 0.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "series_id": [f"s{i}" for i in range(n)],
            "ts": [NIGHT + timedelta(hours=i % 24) for i in range(n)],
            "value": [10.0 + shift] * n, "forecast": [5.0] * n, "lower": [4.0] * n, "upper": [6.0] * n,
            "residual": [5.0 + shift] * n, "score": [0.999] * n, "direction": ["up"] * n,
            "cluster_id": [cluster] * n, "model_version": [1] * n,
        }
    )  # fmt: skip


@pytest.fixture
def engine(db_url):
    e = create_engine(db_url)
    create_schema(e)
    create_schema(e)  # idempotent
    yield e
    e.dispose()


def count(engine, table=anomalies) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_rerunning_a_night_replaces_its_rows(engine):
    end = NIGHT + timedelta(days=1)
    replace_night(engine, anomaly_frame(30), NIGHT, end, "run-1")
    replace_night(engine, anomaly_frame(30, shift=1.0), NIGHT, end, "run-2")
    assert count(engine) == 30
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(anomalies.c.run_id)).scalars()) == {"run-2"}
        assert conn.execute(sa.select(sa.func.min(anomalies.c.value))).scalar() == 11.0


def test_replacing_one_cluster_keeps_the_others(engine):
    end = NIGHT + timedelta(days=1)
    both = pl.concat(
        [anomaly_frame(10, "p24"), anomaly_frame(5, "p168").with_columns(pl.col("series_id") + "w")]
    )
    replace_night(engine, both, NIGHT, end, "run-1")
    replace_night(engine, anomaly_frame(3, "p24"), NIGHT, end, "run-2", cluster_ids=["p24"])
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                sa.select(anomalies.c.cluster_id, sa.func.count()).group_by(anomalies.c.cluster_id)
            ).all()
        )
    assert rows == {"p24": 3, "p168": 5}


def test_crash_mid_write_leaves_previous_night_intact(engine, monkeypatch):
    from tsmeta.store import night as night_writes

    end = NIGHT + timedelta(days=1)
    replace_night(engine, anomaly_frame(8), NIGHT, end, "run-1")
    real = night_writes._insert_anomalies

    def crash_after_half(conn, rows, progress=None):
        real(conn, rows.head(rows.height // 2))  # half the rows are in when the crash comes
        raise RuntimeError("worker died mid-write")

    monkeypatch.setattr(night_writes, "_insert_anomalies", crash_after_half)
    with pytest.raises(RuntimeError, match="mid-write"):
        replace_night(engine, anomaly_frame(20, shift=1.0), NIGHT, end, "run-2")
    with engine.connect() as conn:
        owners = set(conn.execute(sa.select(anomalies.c.run_id)).scalars())
        rollup = conn.execute(
            sa.select(anomaly_daily_counts.c.n_anomalies, anomaly_daily_counts.c.run_id)
        ).all()
    assert count(engine) == 8 and owners == {"run-1"}  # the delete was rolled back too
    assert rollup == [(8, "run-1")]


def test_duplicate_points_are_rejected_before_writing(engine):
    with pytest.raises(ValueError, match="share a \\(series_id, ts\\)"):
        replace_night(
            engine,
            pl.concat([anomaly_frame(3), anomaly_frame(3)]),
            NIGHT,
            NIGHT + timedelta(days=1),
            "r",
        )


def test_rollup_follows_the_night(engine):
    end = NIGHT + timedelta(days=1)
    frame = pl.concat(
        [anomaly_frame(10, "p24"), anomaly_frame(4, "p168").with_columns(pl.col("series_id") + "w")]
    )
    replace_night(engine, frame, NIGHT, end, "run-1", cluster_ids=["p24", "p168", "aperiodic"])
    replace_night(engine, anomaly_frame(6, "p24"), NIGHT, end, "run-2", cluster_ids=["p24"])
    with engine.connect() as conn:
        got = {
            r.cluster_id: (r.n_anomalies, r.n_series, r.run_id)
            for r in conn.execute(sa.select(anomaly_daily_counts))
        }
    assert got == {"p24": (6, 6, "run-2"), "p168": (4, 4, "run-1"), "aperiodic": (0, 0, "run-1")}
    with pytest.raises(ValueError, match="not among the clusters replaced"):
        replace_night(engine, frame, NIGHT, end, "run-3", cluster_ids=["p24"])


def test_written_rows_read_back_exactly(engine):
    frame = anomaly_frame(5).with_columns(
        pl.Series("series_id", ["a,b", 'q"uote', "x;y", "ü", "plain"])
    )
    replace_night(engine, frame, NIGHT, NIGHT + timedelta(days=1), "run-1")
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(anomalies.c.series_id, anomalies.c.ts, anomalies.c.written_at).order_by(
                anomalies.c.series_id
            )
        ).all()
    assert sorted(r.series_id for r in got) == sorted(frame["series_id"].to_list())
    assert all(r.written_at is not None for r in got)
    assert {r.ts.replace(tzinfo=UTC) if r.ts.tzinfo is None else r.ts for r in got} == set(
        frame["ts"].to_list()
    )


def test_bulk_rows_are_stored_as_sqlalchemy_stores_them(tmp_path):
    """SQLite's bulk path hands plain tuples to the driver: every column, timestamps
    included, must hold the same text SQLAlchemy's own insert would have stored (or the
    analysts' range queries would compare text of two formats)."""
    from tsmeta.store.bulk import bulk_insert

    e = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    create_schema(e)
    frame = anomaly_frame(3).with_columns(
        pl.lit("run").alias("run_id"), pl.lit("v1").alias("detector_version"),
        pl.lit(NIGHT + timedelta(microseconds=123456)).alias("written_at"),
        pl.Series("surprise", [3.5, None, float("nan")]), pl.lit(None, pl.String).alias("severity"),
    )  # fmt: skip
    with e.begin() as conn:
        bulk_insert(conn, anomalies, frame)
        conn.execute(
            sa.insert(anomalies),
            frame.with_columns(pl.lit("v2").alias("detector_version")).to_dicts(),
        )
    cols = ", ".join(c for c in frame.columns if c != "detector_version")
    with e.connect() as conn:  # the stored text, not what SQLAlchemy parses it into
        ours, theirs = (
            conn.execute(sa.text(f"SELECT {cols}, typeof(ts) FROM anomalies WHERE "
                                 f"detector_version = :v ORDER BY series_id"), {"v": v}).all()
            for v in ("v1", "v2")
        )  # fmt: skip
    assert len(ours) == 3 and [tuple(map(str, r)) for r in ours] == [
        tuple(map(str, r)) for r in theirs
    ]
    e.dispose()


def test_rows_outside_the_night_are_rejected(engine):
    frame = anomaly_frame(2).with_columns(pl.col("ts") + timedelta(days=2))
    with pytest.raises(ValueError, match="outside the night"):
        replace_night(engine, frame, NIGHT, NIGHT + timedelta(days=1), "r")


def test_runs_lifecycle(engine):
    rid = start_run(engine, "nightly", {"night": "2026-11-14"})
    finish_run(engine, rid, "partial", counts={"flagged": 3}, error=None)
    with engine.connect() as conn:
        row = conn.execute(sa.select(runs).where(runs.c.run_id == rid)).one()
    assert row.status == "partial" and row.counts == {"flagged": 3} and row.finished_at is not None
    with pytest.raises(ValueError, match="run status"):
        finish_run(engine, rid, "done")


def test_profile_replaced_as_a_whole(engine):
    prof = pl.DataFrame({"series_id": ["a", "b", "c"], "period": [24, 24, 0],
                         "strength": [0.9, 0.8, 0.0], "cluster_id": ["p24", "p24", "aperiodic"]})  # fmt: skip
    write_profile(engine, prof, "r1")
    write_profile(engine, prof.head(2), "r2")
    got = read_profile(engine)
    assert sorted(got["series_id"].to_list()) == ["a", "b"]
    assert got.columns == ["series_id", "period", "strength", "cluster_id"]
    routing = read_profile(engine, ("series_id", "cluster_id"))  # what the nightly job reads
    assert routing.sort("series_id").rows() == [("a", "p24"), ("b", "p24")]
    with pytest.raises(ValueError, match="unknown columns"):
        read_profile(engine, ("series_id", "cluster"))


def test_model_versions_roundtrip(engine, tmp_path):
    spec, cfg = FeatureSpec(24), MetaConfig(meta_steps=1)
    params = init_params(spec.n_features, 8, torch.Generator().manual_seed(0))
    model = MetaModel(params, spec, cfg, TailModel(1.2, 6.0), {"val_query_mse_adapted": 0.1})
    assert save_model(engine, tmp_path, "p24", model, "r1") == 1
    assert save_model(engine, tmp_path, "p24", model, "r2") == 2
    latest = load_latest_models(engine)
    version, loaded = latest["p24"]
    assert version == 2 and loaded.calibration == model.calibration
    torch.testing.assert_close(loaded.params["w1"], params["w1"])
    assert (tmp_path / "cluster=p24" / "version=2" / "meta.json").is_file()


def test_series_upsert_keeps_attributes_and_widens_seen_range(engine):
    from tsmeta.store.schema import series
    from tsmeta.store.writes import upsert_series

    t1, t2, t3 = (datetime(2026, 11, d, tzinfo=UTC) for d in (1, 5, 9))
    upsert_series(engine, pl.DataFrame({"series_id": ["a"], "attributes": [{"team": "web"}]}))
    upsert_series(
        engine,
        pl.DataFrame({"series_id": ["a", "b"], "first_seen": [t2, t1], "last_seen": [t2, t2]}),
    )
    upsert_series(engine, pl.DataFrame({"series_id": ["a"], "first_seen": [t1], "last_seen": [t3]}))
    upsert_series(engine, pl.DataFrame({"series_id": ["a"], "first_seen": [t3], "last_seen": [t2]}))
    with engine.connect() as conn:
        rows = {r.series_id: r for r in conn.execute(sa.select(series))}
    a = rows["a"]
    assert a.attributes == {"team": "web"}  # not wiped by updates without attributes
    assert a.first_seen.replace(tzinfo=UTC) == t1 and a.last_seen.replace(tzinfo=UTC) == t3
    assert rows["b"].attributes == {}


def test_feedback_is_validated(engine):
    from tsmeta.store.writes import record_feedback

    with pytest.raises(ValueError, match="not one of"):
        record_feedback(engine, "a", NIGHT, "maybe", author="ana")
    with pytest.raises(ValueError, match="author"):
        record_feedback(engine, "a", NIGHT, "true_positive", author="")


def test_surprise_ranks_anomalies_whose_score_has_saturated(engine):
    """Tail probabilities of 1e-20 and 1e-40 both store a score of exactly 1.0; the
    surprise (-log10 p) keeps them apart, and the anomalies query ranks by it within a tie
    (rows written before the column existed, NULL, come last)."""
    import numpy as np

    from tsmeta.detect import surprise_of
    from tsmeta.store.queries import query_anomalies

    tails = np.array([1e-20, 1e-40, 1e-3, 0.0, np.nan])
    np.testing.assert_allclose(surprise_of(tails)[:4], [20.0, 40.0, 3.0, 300.0])
    assert np.isnan(surprise_of(tails)[4])
    assert 1.0 - 1e-20 == 1.0 - 1e-40 == 1.0  # what the score alone cannot tell apart
    frame = anomaly_frame(4).with_columns(
        pl.Series("score", [1.0, 1.0, 1.0, 0.9995]),
        pl.Series("surprise", [20.0, 40.0, None, 3.3]),
    )
    replace_night(engine, frame, NIGHT, NIGHT + timedelta(days=1), "run-1")
    got = query_anomalies(engine, NIGHT.date(), NIGHT.date())
    assert got.get_column("series_id").to_list() == ["s1", "s0", "s2", "s3"]
    assert got.get_column("surprise").to_list() == [40.0, 20.0, None, 3.3]


def test_models_load_from_any_working_directory_and_after_a_move(engine, tmp_path, monkeypatch):
    """A relative model directory (the embedded default, tsmeta-data/models) must not tie
    later loads to the directory training ran in; a moved model directory loads through
    ``model_dir``; a missing one names both places it looked and the fix."""
    import shutil

    from tsmeta.store.schema import models

    spec, cfg = FeatureSpec(24), MetaConfig(meta_steps=1)
    params = init_params(spec.n_features, 8, torch.Generator().manual_seed(0))
    model = MetaModel(params, spec, cfg, TailModel(1.2, 6.0), {})
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    save_model(engine, Path("tsmeta-data/models"), "p24", model, "r1")
    monkeypatch.chdir(tmp_path)  # elsewhere: the registered path still resolves
    assert load_latest_models(engine)["p24"][0] == 1
    # a registry row from before paths were stored resolved, and the files moved since
    with engine.begin() as conn:
        conn.execute(sa.update(models).values(path="tsmeta-data/models/cluster=p24/version=1"))
    shutil.move(tmp_path / "work" / "tsmeta-data", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="TSMETA_MODEL_DIR"):
        load_latest_models(engine)
    version, loaded = load_latest_models(engine, model_dir=tmp_path / "moved" / "models")["p24"]
    assert version == 1
    torch.testing.assert_close(loaded.params["w1"], params["w1"])
