"""Alembic migrations: the head equals the metadata; older databases upgrade in place."""

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tsmeta.store.migrate import current_revision, head_revision, upgrade
from tsmeta.store.schema import anomaly_daily_counts, create_schema, metadata

ROW = {
    "series_id": "s1", "ts": datetime(2026, 11, 14, 5, tzinfo=UTC), "value": 9.0, "forecast": 5.0,
    "lower": 4.0, "upper": 6.0, "residual": 4.0, "score": 0.9999, "direction": "up",
    "cluster_id": "p24", "model_version": 1, "run_id": "r1", "detector_version": "maml-v1",
}  # fmt: skip


@pytest.fixture
def engine(db_url):
    e = sa.create_engine(db_url)
    yield e
    e.dispose()


def test_head_matches_the_metadata(engine):
    assert upgrade(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        )
    assert diff == [], f"migrations and tsmeta/store/schema.py differ: {diff}"
    create_schema(engine)  # idempotent at head


def _insert_foundation_rows(engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into anomalies (series_id, ts, value, forecast, lower, upper, residual, score, direction,"
            " cluster_id, model_version, run_id, detector_version) values (:series_id, :ts, :value, :forecast,"
            " :lower, :upper, :residual, :score, :direction, :cluster_id, :model_version, :run_id, :detector_version)"
        ), [ROW, {**ROW, "series_id": "s2", "score": 0.9995}])  # fmt: skip


def test_database_at_first_revision_upgrades_in_place(engine):
    assert upgrade(engine, "0001") == "0001"
    _insert_foundation_rows(engine)
    assert upgrade(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from anomalies")).scalar() == 2
        assert (
            conn.execute(
                sa.text("select count(*) from anomalies where written_at is null")
            ).scalar()
            == 2
        )
        rollup = conn.execute(sa.select(anomaly_daily_counts)).one()
    assert (rollup.n_anomalies, rollup.n_series, rollup.cluster_id) == (2, 2, "p24")
    assert str(rollup.night) == "2026-11-14"


def test_pre_migration_database_is_stamped_then_upgraded(engine):
    upgrade(engine, "0001")
    _insert_foundation_rows(engine)
    with engine.begin() as conn:  # what the foundation's create_all left: no version table
        conn.execute(sa.text("drop table alembic_version"))
    assert current_revision(engine) is None
    create_schema(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from anomalies")).scalar() == 2


def test_db_upgrade_command(tmp_path, capsys):
    from tsmeta.cli import main

    assert main(["db", "upgrade", "--data-dir", str(tmp_path)]) == 0
    assert head_revision() in capsys.readouterr().out


def test_stored_rows_take_the_detector_version_of_the_current_rules(engine):
    from tsmeta.store.schema import DETECTOR_VERSION

    upgrade(engine, "0001")
    _insert_foundation_rows(engine)  # written as 'maml-v1', whatever the meta-learner
    assert upgrade(engine, "0005") == "0005"  # the rollup (0002) takes their version too
    with engine.connect() as conn:
        old = conn.execute(sa.text("select detector_version from anomaly_daily_counts")).scalars()
        assert old.all() == ["maml-v1"]
    upgrade(engine)
    with engine.connect() as conn:
        for table in ("anomalies", "anomaly_daily_counts"):
            versions = conn.execute(sa.text(f"select distinct detector_version from {table}"))
            assert versions.scalars().all() == [DETECTOR_VERSION] == ["tsmeta-1"]
