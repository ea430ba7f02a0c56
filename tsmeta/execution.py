"""Ray execution: the only module that imports Ray.

Meta-training runs one Ray task per cluster, requesting a GPU when the Ray cluster has
GPUs. Nightly scoring (when ``TSMETA_EXECUTOR=ray``) runs one Ray task per chunk of series,
with the cluster's model put in the object store once. Large arrays go to the object store
once (``ray.put``) and tasks receive references.
A failure in one cluster is returned as that cluster's error; the others still finish.
Local Ray by default; an existing cluster via ``TSMETA_RAY_ADDRESS`` (settings.ray_address).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ensure_ray", "ClusterJob", "train_clusters", "RayScorer", "shutdown_ray"]

log = logging.getLogger("tsmeta")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process: ``address`` for a cluster, else start a private
    local instance (``address="local"``), whatever other Ray cluster runs on the machine or
    ``RAY_ADDRESS`` names: an unset ``TSMETA_RAY_ADDRESS`` never joins one by accident."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        _connect(ray, address)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            object_store_memory=512 * 1024**2,
            log_to_driver=False,
        )


CLIENT_ATTEMPTS = 3  # a ray:// connection's tries (its server process can fail to start)


def _connect(ray, address: str) -> None:  # noqa: ANN001 - the ray module
    """``ray.init(address)``; through ``ray://`` tried again when the client server's
    per-connection process failed to start ("Initialization failure from server": it
    happens now and then on a busy head, and the next connection gets a fresh one)."""
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, log_to_driver=False)
            return
        except ConnectionError as exc:  # ConnectionAbortedError among them
            if not address.startswith("ray://") or attempt == CLIENT_ATTEMPTS:
                raise
            log.warning("connecting to %s failed (%s), trying again (%d of %d)", address,
                        str(exc).splitlines()[0], attempt + 1, CLIENT_ATTEMPTS)  # fmt: skip
            ray.shutdown()
            time.sleep(2.0 * attempt)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@dataclass
class ClusterJob:
    cluster_id: str
    values: np.ndarray  # (n, T) float32, NaN where missing
    mask: np.ndarray  # (n, T) bool
    start_step: int
    spec: dict  # FeatureSpec as a dict
    config: dict  # MetaConfig as a dict


def _train_one(
    values: np.ndarray, mask: np.ndarray, start_step: int, spec: dict, config: dict
) -> dict:
    """Runs in a Ray worker: meta-train one cluster, return the model state (CPU tensors)."""
    import torch

    from tsmeta.forecaster import FeatureSpec
    from tsmeta.meta.train import MetaConfig, meta_train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = meta_train(
        values, mask, start_step, FeatureSpec(**spec), MetaConfig(**config), device=device
    )
    model.metrics["device"] = device
    return model.state()


def train_clusters(
    jobs: list[ClusterJob],
    address: str | None = None,
    on_done: Callable[[str, dict | BaseException], None] | None = None,
    in_flight: int | None = None,
) -> dict[str, dict | BaseException]:
    """Meta-train every cluster as its own Ray task; {cluster_id: model state or error}.

    Worker crashes are retried by Ray (``max_retries``); exceptions raised by training are
    not (a retry would fail the same way) and come back as that cluster's error.
    """
    import ray

    ensure_ray(address)
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    remote = ray.remote(max_retries=2, retry_exceptions=False)(_train_one).options(
        num_cpus=1, num_gpus=1 if gpus else 0
    )
    # at most one training per CPU is in flight, so the object store holds only the data
    # of the clusters being trained (the driver drops each cluster's arrays once sent)
    limit = in_flight or max(1, int(ray.cluster_resources().get("CPU", 1)))
    queue = list(jobs)
    queue.reverse()
    pending: dict = {}

    def send() -> None:
        job = queue.pop()
        ref = remote.remote(
            ray.put(job.values), ray.put(job.mask), job.start_step, job.spec, job.config
        )
        job.values = job.mask = None  # type: ignore[assignment]
        pending[ref] = job.cluster_id

    while queue and len(pending) < limit:
        send()
    results: dict[str, dict | BaseException] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        cid = pending.pop(done[0])
        try:
            results[cid] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - reported per cluster, others go on
            cause = getattr(exc, "cause", None)
            results[cid] = cause if isinstance(cause, BaseException) else exc
        if on_done is not None:
            on_done(cid, results[cid])
        if queue:
            send()
    return results


def _score_one(
    model_state: dict,
    values: np.ndarray,
    mask: np.ndarray,
    ids: np.ndarray,
    start_step: int,
    false_alarm_rate: float,
    chunk_series: int,
    device: str = "cpu",
    causal: bool = False,
):  # noqa: ANN202
    """Runs in a Ray worker: score one chunk of series (see ``tsmeta.detect.score_day``)."""
    from tsmeta.detect import score_day
    from tsmeta.meta.train import MetaModel

    return score_day(values, mask, ids, start_step, MetaModel.from_state(model_state),
                     false_alarm_rate, chunk_series, device, causal)  # fmt: skip


class RayScorer:
    """Scores batches of series as Ray tasks, at most ``in_flight`` at once.

    Each model goes into the object store once (keyed by cluster); results come back in
    submission order as (key, batch, ScoredDay or the exception that task raised), so
    one cluster's failure is reported without stopping the others. Worker crashes are
    retried by Ray.

    ``device``: ``"cuda"`` asks Ray for GPU workers (a quarter of a GPU per task, so a few
    chunks overlap their transfers); ``"auto"`` does so when the cluster has GPUs.
    """

    def __init__(
        self,
        address: str | None,
        false_alarm_rate: float,
        chunk_series: int,
        in_flight: int | None = None,
        device: str = "cpu",
        causal: bool = False,
    ) -> None:
        import ray

        ensure_ray(address)
        self._ray = ray
        resources = ray.cluster_resources()
        if device == "auto":
            device = "cuda" if resources.get("GPU", 0) > 0 else "cpu"
        if device == "cuda" and resources.get("GPU", 0) <= 0:
            raise ValueError(
                "TSMETA_DEVICE=cuda but the Ray cluster has no GPU: "
                "set TSMETA_DEVICE=auto (or cpu), or add GPU workers"
            )
        self.device = device
        self.limit = in_flight or 2 * max(1, int(resources.get("CPU", 1)))
        gpus = {"num_gpus": 0.25} if device == "cuda" else {}
        self.remote = ray.remote(max_retries=2, retry_exceptions=False)(_score_one).options(
            num_cpus=1, **gpus
        )
        self.args = (false_alarm_rate, chunk_series, device, causal)
        self.models: dict[str, object] = {}
        self.pending: deque = deque()

    def submit(self, key: str, model_state: dict, batch) -> list[tuple[str, object, object]]:  # noqa: ANN001
        if key not in self.models:
            self.models[key] = self._ray.put(model_state)
        ref = self.remote.remote(self.models[key], batch.values, batch.mask, batch.series_ids,
                                 batch.start_step, *self.args)  # fmt: skip
        self.pending.append((key, batch, ref))
        out = []
        while len(self.pending) > self.limit:
            out.append(self._pop())
        return out

    def drain(self) -> list[tuple[str, object, object]]:
        return [self._pop() for _ in range(len(self.pending))]

    def _pop(self) -> tuple[str, object, object]:
        key, batch, ref = self.pending.popleft()
        try:
            return key, batch, self._ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - handed to the caller, per cluster
            cause = getattr(exc, "cause", None)
            return key, batch, cause if isinstance(cause, BaseException) else exc
