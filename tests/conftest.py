"""Shared fixtures: one Prefect test harness, one local Ray, a scratch PostgreSQL database.

PostgreSQL: ``TSMETA_TEST_POSTGRES_URL`` (default the local server's ``postgres``
database) is used to create a throw-away database per session. When the server cannot be
reached the PostgreSQL tests are skipped with the reason, except under ``CI=true``, where
they fail: CI must exercise the real server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_HOME", str(_ROOT / ".tsmeta" / "prefect-test"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _var in [v for v in os.environ if v.startswith("TSMETA_") and v != "TSMETA_TEST_POSTGRES_URL"]:
    del os.environ[_var]  # tests set their own settings
# a first night's residual history from one night before it, not the default week: every
# test that scores a first night would score 8 (test_faults checks the default's warm-up)
os.environ["TSMETA_HISTORY_WARMUP_NIGHTS"] = "1"

PG_ADMIN_URL = os.environ.get(
    "TSMETA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_local():
    from tsmeta.execution import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def pg_url():
    """URL of a fresh PostgreSQL database for this session (dropped afterwards)."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        reason = f"PostgreSQL unreachable at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason} (CI=true requires the server)")
        pytest.skip(reason)
    name = f"tsmeta_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each store test runs against SQLite and against the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tsmeta.db'}"
    url = request.getfixturevalue("pg_url")
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:  # each test starts from an empty schema (views included)
        conn.execute(sa.text("drop schema public cascade"))
        conn.execute(sa.text("create schema public"))
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """300 hourly series x 29 days, written as the partitioned dataset."""
    from tsmeta.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny") / "dataset"
    manifest = write_synthetic_dataset(root, 300, "h", 29, "2026-11-01", seed=7, anomaly_rate=0.03)
    return root, manifest
