from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
import sqlalchemy as sa
import torch

from tsmeta.calibration import TailModel
from tsmeta.forecaster import FeatureSpec, init_params
from tsmeta.meta.train import MetaConfig, MetaModel
from tsmeta.store.models import load_latest_models, save_model
from tsmeta.store.schema import anomalies, create_engine, create_schema, runs
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


def test_failed_write_leaves_previous_night_intact(engine):
    end = NIGHT + timedelta(days=1)
    replace_night(engine, anomaly_frame(8), NIGHT, end, "run-1")
    bad = pl.concat([anomaly_frame(8), anomaly_frame(8)])  # duplicate keys: the insert fails
    with pytest.raises(sa.exc.IntegrityError):
        replace_night(engine, bad, NIGHT, end, "run-2")
    assert count(engine) == 8  # the delete was rolled back with the failed insert


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
