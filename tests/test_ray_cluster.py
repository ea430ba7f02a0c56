"""`tsmeta train` beside a running `ray start --head` cluster, as users meet it.

With ``TSMETA_RAY_ADDRESS`` unset the command must start its own private Ray and succeed,
whatever cluster runs on the machine (Ray's ``ray.init()`` would otherwise join that
cluster and refuse the local instance's CPU count); with ``ray://host:port`` it must train
on that cluster through the Ray client (``ray[client]`` is in the pinned set; the cluster
uses Ray's token authentication, so the client sets ``RAY_AUTH_MODE=token``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
LAST = date(2026, 11, 29)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A `ray start --head --block` cluster (its own process group, stopped afterwards)."""
    gcs, client = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path / "ray-head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={gcs}", f"--ray-client-server-port={client}",
             "--num-cpus=1", "--include-dashboard=false"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            if "Ray runtime started" in log.read_text():
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", client)) == 0:
                        break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield f"ray://127.0.0.1:{client}"
    finally:  # `ray start --block` stops its processes on SIGINT, as on Ctrl-C
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def profiled(tmp_path, tiny_dataset):
    from tsmeta import jobs
    from tsmeta.config import load_settings

    root, _ = tiny_dataset
    settings = load_settings(data_dir=str(tmp_path / "data"), dataset_path=str(root))
    jobs.profile_series(settings, LAST, "test-profile")
    return {"TSMETA_DATA_DIR": str(tmp_path / "data"), "TSMETA_DATASET_PATH": str(root)}


def _train(env: dict, cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tsmeta.cli", "train", "--as-of", str(LAST), "--meta-steps", "10",
         "--cluster", "p24-0"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def test_train_with_the_address_unset_starts_a_private_ray_beside_a_running_cluster(
    ray_head, profiled, tmp_path
):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TSMETA_", "RAY_ADDRESS"))}
    env = {**base, **profiled, "RAY_USAGE_STATS_ENABLED": "0"}
    res = _train(env, tmp_path)  # TSMETA_RAY_ADDRESS unset: a private local Ray
    assert res["status"] == "completed", res
    # the documented ray:// form trains on the running cluster through the Ray client
    res = _train({**env, "TSMETA_RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "token"}, tmp_path)
    assert res["status"] == "completed", res
