"""The production path as a data engineer runs it, with nothing standing in.

A real ``prefect server start`` on a free port with its own ``PREFECT_HOME`` and its own
PostgreSQL database (the production setup), the work pool and the deployments created
with the commands of ``deploy/README.md``, an interval schedule added to the nightly
deployment, and a real ``prefect worker start`` process: the server's scheduler must
create the run, the worker must execute it, and the anomaly rows must land in tsmeta's
PostgreSQL database. Every process the test starts is stopped at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = {"nightly/nightly", "meta_train/meta_train", "profile/profile", "backfill/backfill"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


@pytest.fixture
def pg_schema(pg_url):
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("drop schema public cascade"))
        conn.execute(sa.text("create schema public"))
    engine.dispose()
    return pg_url


@pytest.fixture
def prefect_database(pg_url):
    """A fresh PostgreSQL database for the Prefect server (production's backing store)."""
    import uuid

    admin = sa.make_url(pg_url)
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    name = f"prefect_test_{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    yield admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    with engine.connect() as conn:
        conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    engine.dispose()


@pytest.fixture
def trained_config(tmp_path, pg_schema, ray_local):
    """A dataset whose last days are yesterday and today (UTC), profiled, models trained."""
    from tsmeta import jobs
    from tsmeta.config import load_settings
    from tsmeta.data.synthetic import write_synthetic_dataset

    today = datetime.now(UTC).date()
    days = 22
    root = tmp_path / "dataset"
    write_synthetic_dataset(root, 300, "h", days, str(today - timedelta(days=days - 1)), seed=11,
                            anomaly_rate=0.05)  # fmt: skip
    env = {
        "TSMETA_DATA_DIR": str(tmp_path / "data"),
        "TSMETA_DATASET_PATH": str(root),
        "TSMETA_DATABASE_URL": pg_schema,
    }
    settings = load_settings(data_dir=env["TSMETA_DATA_DIR"], dataset_path=str(root),
                             database_url=pg_schema)  # fmt: skip
    as_of = today - timedelta(days=2)
    jobs.profile_series(settings, as_of, "test-profile")
    trained = jobs.train_models(settings, as_of, "test-train", None, meta_steps=30)
    assert all("error" not in r for r in trained.values()), trained
    return env, settings


def _prefect(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    res = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert res.returncode == 0, (
        f"prefect {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    )
    return res


def test_scheduled_nightly_runs_on_a_real_server_and_worker_and_writes_rows(
    tmp_path, trained_config, prefect_database
):
    from tsmeta.store.schema import anomalies, runs

    tsmeta_env, settings = trained_config
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TSMETA_"))}
    base.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        RAY_USAGE_STATS_ENABLED="0",
    )
    server_env = {**base, "PREFECT_API_DATABASE_CONNECTION_URL": prefect_database}
    client_env = {**base, "PREFECT_API_URL": api, "TSMETA_HOME": str(ROOT)}
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    started: list[subprocess.Popen] = []
    try:
        with server_log.open("w") as out:  # the documented command: prefect server start
            started.append(subprocess.Popen(
                [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                cwd=tmp_path, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))  # fmt: skip
        deadline = time.monotonic() + 150
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert started[0].poll() is None, f"server exited:\n{_tail(server_log)}"
            assert time.monotonic() < deadline, f"server not healthy:\n{_tail(server_log)}"
            time.sleep(1)

        # deploy/README.md's commands, as written
        _prefect(["work-pool", "create", "tsmeta", "--type", "process"], client_env)
        _prefect(["--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"],
                 client_env)  # fmt: skip
        listed = _prefect(["deployment", "ls"], client_env).stdout
        assert all(name.split("/")[0] in listed for name in DEPLOYMENTS), listed
        # a schedule that fires within the test, beside the nightly cron
        _prefect(["deployment", "schedule", "create", "nightly/nightly", "--interval", "10"],
                 client_env)  # fmt: skip

        with worker_log.open("w") as out:
            started.append(subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "tsmeta"], cwd=ROOT,
                env={**client_env, **tsmeta_env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))  # fmt: skip

        # the server's scheduler creates the run; the worker executes it
        deadline = time.monotonic() + 240
        done: list[dict] = []
        while not done:
            found = httpx.post(f"{api}/flow_runs/filter", json={
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
                "limit": 50,
            }, timeout=10).raise_for_status().json()  # fmt: skip
            for run in found:
                assert run["state_type"] == "COMPLETED", (
                    f"run {run['name']} ended {run['state_type']}: {run['state']['message']}\n"
                    f"worker log:\n{_tail(worker_log)}"
                )
            done = found
            flow_names = {
                run["flow_id"]: httpx.get(f"{api}/flows/{run['flow_id']}", timeout=10).json()[
                    "name"
                ]
                for run in done
            }
            assert time.monotonic() < deadline, (
                f"no scheduled run completed in time\nworker log:\n{_tail(worker_log)}\n"
                f"server log:\n{_tail(server_log)}"
            )
            time.sleep(2)
        # the documented stop (deploy/README.md): pause the pool, then SIGTERM twice
        _prefect(["work-pool", "pause", "tsmeta"], client_env)
        worker = started[1]
        for _ in range(2):
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        worker_stopped = worker.poll() is not None
    finally:
        for proc in reversed(started):
            _stop(proc)
    assert all(p.poll() is not None for p in started)
    assert worker_stopped, f"the worker outlived two SIGTERMs:\n{_tail(worker_log)}"
    # every finished run was created by the server's scheduler for the nightly deployment
    assert all(run["auto_scheduled"] for run in done), done
    assert {flow_names[run["flow_id"]] for run in done} == {"nightly"}

    # the runs recorded themselves, and the night's anomaly rows are one completed run's
    # (each run of the interval schedule re-scores the same default night, replacing them)
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        recorded = {r["run_id"]: r for r in conn.execute(sa.select(runs)).mappings()}
        by_run = dict(conn.execute(
            sa.select(anomalies.c.run_id, sa.func.count()).group_by(anomalies.c.run_id)
        ).all())  # fmt: skip
    engine.dispose()
    assert all(recorded[run["id"]]["status"] == "completed" for run in done)
    ((writer, written),) = by_run.items()
    assert written > 0 and recorded[writer]["status"] == "completed"
    assert recorded[writer]["counts"]["written"] == written
    today = datetime.now(UTC).date()  # the default night is yesterday (midnight may have passed)
    assert recorded[writer]["parameters"]["night"] in (
        str(today - timedelta(days=1)),
        str(today - timedelta(days=2)),
    )
