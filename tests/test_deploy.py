"""Every deployment in deploy/prefect.yaml points at an importable flow with valid parameters."""

import importlib
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())["deployments"]


def test_expected_deployments_exist():
    assert {d["name"] for d in DEPLOYMENTS} >= {"nightly", "meta_train", "profile"}


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_wiring(dep):
    path, func = dep["entrypoint"].split(":")
    assert (ROOT / path).is_file()
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, func)
    assert isinstance(flow, Flow)
    flow.validate_parameters(dep.get("parameters") or {})
    for sched in dep.get("schedules") or []:
        CronSchedule(cron=sched["cron"], timezone=sched.get("timezone", "UTC"))
