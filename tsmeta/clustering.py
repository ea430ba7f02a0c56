"""Cluster assignment: series are grouped by detected period.

Walking-skeleton version: one cluster per period (``p24``, ``p168``, ``p7``) plus
``aperiodic``. Shape sub-clusters, a maximum cluster size and persisted centroids come
with the periodicity/clustering issue; the cluster id format leaves room for them
(``p24-3``).
"""

from __future__ import annotations

import numpy as np

from tsmeta.periodicity import APERIODIC

__all__ = ["cluster_id_for_period", "assign_by_period", "period_of_cluster"]


def cluster_id_for_period(period: int) -> str:
    return "aperiodic" if int(period) == APERIODIC else f"p{int(period)}"


def assign_by_period(periods: np.ndarray) -> np.ndarray:
    """Cluster id (str) per series from its detected period; vectorised over series."""
    uniq, inverse = np.unique(np.asarray(periods, dtype=np.int64), return_inverse=True)
    names = np.array([cluster_id_for_period(p) for p in uniq], dtype=object)
    return names[inverse]


def period_of_cluster(cluster_id: str) -> int:
    """Period a cluster's series share (0 for aperiodic)."""
    if cluster_id == "aperiodic":
        return APERIODIC
    head = cluster_id.split("-", 1)[0]
    if not head.startswith("p") or not head[1:].isdigit():
        raise ValueError(
            f"cluster id {cluster_id!r} is not of the form 'p<period>[-n]' or 'aperiodic'"
        )
    return int(head[1:])
