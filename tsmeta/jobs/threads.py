"""How many torch threads and batches at once a night's in-process scoring runs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tsmeta.config import Settings
from tsmeta.meta.batched import head_only
from tsmeta.meta.train import MetaModel

__all__ = ["score_threads", "score_workers", "torch_threads"]


def score_threads(settings: Settings, models: dict[str, tuple[int, MetaModel]]) -> int:
    """torch threads for in-process scoring of ``models`` (0: leave torch's as they are)."""
    if settings.executor != "local":
        return 0  # each Ray worker sets its own
    if settings.score_threads is not None:
        return settings.score_threads
    return 1 if models and all(head_only(m.rates) for _, m in models.values()) else 0


def score_workers(settings: Settings, threads: int) -> int:
    """Batches scored at once in-process (``Settings.score_workers``; unset: one per core
    when each runs on one torch thread on the CPU, else 1)."""
    if settings.executor != "local":
        return 1  # the Ray workers are the parallelism
    if settings.score_workers is not None:
        return settings.score_workers
    if threads != 1 or settings.torch_device() != "cpu":
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)  # fmt: skip


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside (0: left as they are), then restored."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)
