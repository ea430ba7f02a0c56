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


def test_ray_cluster_configs_have_gpu_workers():
    launcher = yaml.safe_load((ROOT / "deploy" / "ray" / "cluster.yaml").read_text())
    gpu_types = [t for t in launcher["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu_types and launcher["head_node_type"] in launcher["available_node_types"]
    kuberay = yaml.safe_load((ROOT / "deploy" / "ray" / "kuberay.yaml").read_text())
    assert kuberay["kind"] == "RayCluster"
    groups = kuberay["spec"]["workerGroupSpecs"]
    limits = [c["resources"]["limits"] for g in groups for c in g["template"]["spec"]["containers"]]
    assert any("nvidia.com/gpu" in lim for lim in limits)
    import ray

    assert kuberay["spec"]["rayVersion"] == ray.__version__  # the image must match the driver's Ray
