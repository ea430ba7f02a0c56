"""Clusters: series grouped by detected period, large groups split by seasonal shape.

A cluster is keyed first by period (``p24-…``, ``p168-…``, ``aperiodic-…``). Within a
period, series are described by their *shape*: the mean value at each phase of the period
(phases counted on the global grid, so that hour 0 is midnight UTC for every series), after
removing a linear trend, z-normalised. Squared Euclidean distance between two shapes is
``2 * L * (1 - correlation)``, so "near" means "rises and falls at the same hours".

A period group larger than ``max_cluster_size`` is split by bisecting 2-means on the
shapes (the largest cluster is split until none exceeds the cap). Aperiodic series are
described by their mean daily (or weekly, for daily data) profile the same way.

The fitted centroids are the clustering: a later profiling assigns every series to the
nearest centroid of its period group (:meth:`ClusterSet.assign`), so cluster ids and the
models trained for them stay put; only a period group that has no clusters yet is fitted.
Re-clustering everything is the explicit operation (``tsmeta profile --recluster``); it
keeps the id of every old cluster whose centroid is matched by a new one.

Everything here is batched numpy over chunks of series; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tsmeta.periodicity import APERIODIC, _detrended

__all__ = [
    "ClusterSet",
    "seasonal_shape",
    "shape_length",
    "shape_bins",
    "fit_group",
    "match_ids",
    "cluster_id_for",
    "period_of_cluster",
]

_SAMPLE = 20_000  # shapes a 2-means split is fitted on (all members are then assigned)
_ITERS = 25
_MIN_SIDE = 0.1  # a split leaving less than this share on one side is replaced by a median cut


def shape_length(period: int, default: int) -> int:
    """Length of the shape vector of a period group (aperiodic: the default period)."""
    return int(period) if int(period) != APERIODIC else int(default)


MAX_SHAPE = 336  # bins of a shape vector at most (a week of half hours)


def shape_bins(length: int) -> int:
    """Bins of a period's shape vector: the period itself up to ``MAX_SHAPE`` steps, else the
    largest divisor of the period not above it (1,440 -> 288, 2,016 -> 336, 10,080 -> 336)."""
    if length <= MAX_SHAPE:
        return int(length)
    return max(b for b in range(1, MAX_SHAPE + 1) if length % b == 0)


def cluster_id_for(period: int, index: int) -> str:
    head = "aperiodic" if int(period) == APERIODIC else f"p{int(period)}"
    return f"{head}-{int(index)}"


def period_of_cluster(cluster_id: str) -> int:
    """Period a cluster's series share (0 for aperiodic)."""
    head = cluster_id.split("-", 1)[0]
    if head == "aperiodic":
        return APERIODIC
    if not head.startswith("p") or not head[1:].isdigit():
        raise ValueError(
            f"cluster id {cluster_id!r} is not of the form 'p<period>[-n]' or 'aperiodic[-n]'"
        )
    return int(head[1:])


def _index_of(cluster_id: str) -> int:
    tail = cluster_id.rsplit("-", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0


def seasonal_shape(
    values: np.ndarray, mask: np.ndarray, start_step: int, length: int
) -> np.ndarray:
    """(n, bins) float32: mean detrended value at each phase, z-normalised.

    Phase ``j`` is the global step ``start_step + column`` modulo ``length``. Missing points
    are left out of the means; phases never observed and flat or empty series give 0.
    Periods longer than ``MAX_SHAPE`` steps (a day or a week of minutes) are averaged into
    ``shape_bins(length)`` consecutive-phase bins, so shape vectors and k-means stay small.
    """
    n, T = values.shape
    if length < 1:
        raise ValueError(f"shape length must be >= 1, received {length}")
    x, _ = _detrended(values, mask, np.float32)  # 0 where unobserved
    m = mask.astype(np.float32)
    lead = int(start_step) % length
    cycles = -(-(lead + T) // length)
    pad = cycles * length - lead - T
    if lead or pad:
        x = np.pad(x, ((0, 0), (lead, pad)))
        m = np.pad(m, ((0, 0), (lead, pad)))
    sums = x.reshape(n, cycles, length).sum(axis=1)
    counts = m.reshape(n, cycles, length).sum(axis=1)
    bins = shape_bins(length)
    if bins < length:
        sums = sums.reshape(n, bins, length // bins).sum(axis=2)
        counts = counts.reshape(n, bins, length // bins).sum(axis=2)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1.0), 0.0)
    seen = counts > 0
    k = np.maximum(seen.sum(axis=1, keepdims=True), 1)
    mean = np.where(seen, mean - mean.sum(axis=1, keepdims=True) / k, 0.0)
    sd = np.sqrt((mean * mean).sum(axis=1, keepdims=True) / k)
    return np.where(sd > 1e-6, mean / np.where(sd > 1e-6, sd, 1.0), 0.0).astype(np.float32)


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, k) squared Euclidean distances, by one matrix product."""
    d = (x * x).sum(1, keepdims=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _two_means(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels 0/1 for the rows of ``x``: 2-means fitted on a sample, k-means++ seeding."""
    sample = x if len(x) <= _SAMPLE else x[rng.choice(len(x), _SAMPLE, replace=False)]
    first = sample[rng.integers(len(sample))]
    d = _sq_dist(sample, first[None, :])[:, 0]
    if d.sum() <= 0:  # all identical: cut in half
        return (np.arange(len(x)) >= len(x) // 2).astype(np.int8)
    second = sample[rng.choice(len(sample), p=d / d.sum())]
    cent = np.stack([first, second]).astype(np.float32)
    for _ in range(_ITERS):
        lab = _sq_dist(sample, cent).argmin(1)
        new = np.stack([
            sample[lab == j].mean(0) if (lab == j).any() else cent[j] for j in (0, 1)
        ])  # fmt: skip
        if np.allclose(new, cent, atol=1e-5):
            break
        cent = new.astype(np.float32)
    lab = _sq_dist(x, cent).argmin(1).astype(np.int8)
    small = min(int(lab.sum()), len(lab) - int(lab.sum()))
    if small < _MIN_SIDE * len(lab):  # degenerate split: cut at the median along c1 - c0
        proj = x @ (cent[1] - cent[0])
        lab = (proj > np.median(proj)).astype(np.int8)
        if min(int(lab.sum()), len(lab) - int(lab.sum())) == 0:  # ties: cut in half by rank
            lab = np.zeros(len(x), dtype=np.int8)
            lab[np.argsort(proj, kind="stable")[len(x) // 2 :]] = 1
    return lab


def fit_group(shapes: np.ndarray, max_cluster_size: int, seed: int = 0) -> np.ndarray:
    """Bisecting 2-means: centroids (k, L) such that no cluster exceeds the cap.

    Centroids are ordered by cluster size, largest first; deterministic for a seed. A set
    of identical shapes (e.g. all flat series) is one cluster whatever its size: no shape
    tells them apart, so nearest-centroid assignment could not keep a split anyway.
    """
    if max_cluster_size < 1:
        raise ValueError(f"max_cluster_size must be >= 1, received {max_cluster_size}")
    n = len(shapes)
    if n == 0:
        raise ValueError("cannot fit clusters on zero series")
    rng = np.random.default_rng(seed)
    members, done = [np.arange(n)], []
    while members:
        big = int(np.argmax([len(m) for m in members]))
        if len(members[big]) <= max_cluster_size:
            break
        idx = members.pop(big)
        part = shapes[idx]
        if np.ptp(part, axis=0).max() <= 1e-6:  # identical shapes: a split would mean nothing
            done.append(idx)
            continue
        lab = _two_means(part, rng)
        members += [idx[lab == 0], idx[lab == 1]]
    members += done
    members.sort(key=len, reverse=True)
    return np.stack([shapes[m].mean(0) for m in members]).astype(np.float32)


def match_ids(old: np.ndarray, new: np.ndarray) -> list[int]:
    """For each new centroid, the index of the old centroid it takes the id of, or -1.

    Greedy on distance: the closest (new, old) pair is matched first; each old id is used
    at most once.
    """
    out = [-1] * len(new)
    if len(old) == 0 or len(new) == 0:
        return out
    d = _sq_dist(new.astype(np.float32), old.astype(np.float32))
    order = np.argsort(d, axis=None, kind="stable")
    used_new, used_old = set(), set()
    for flat in order:
        i, j = divmod(int(flat), d.shape[1])
        if i in used_new or j in used_old:
            continue
        out[i] = j
        used_new.add(i)
        used_old.add(j)
        if len(used_new) == len(new) or len(used_old) == len(old):
            break
    return out


@dataclass
class ClusterSet:
    """The fitted clustering: per period, the cluster ids and their shape centroids."""

    groups: dict[int, tuple[list[str], np.ndarray]] = field(default_factory=dict)

    @property
    def cluster_ids(self) -> list[str]:
        return [cid for ids, _ in self.groups.values() for cid in ids]

    def __contains__(self, period: int) -> bool:
        return int(period) in self.groups

    def assign(self, period: int, shapes: np.ndarray) -> np.ndarray:
        """Cluster id (object array) of each shape of a period group: nearest centroid."""
        ids, cent = self.groups[int(period)]
        if len(ids) == 1:
            return np.full(len(shapes), ids[0], dtype=object)
        return np.asarray(ids, dtype=object)[_sq_dist(shapes, cent).argmin(1)]

    def fit(
        self,
        period: int,
        shapes: np.ndarray,
        max_cluster_size: int,
        seed: int = 0,
        previous: ClusterSet | None = None,
    ) -> np.ndarray:
        """Fit (or refit) one period group; returns the cluster id of each shape.

        With ``previous``, new clusters take the ids of the old clusters of the same period
        whose centroids they match; the others get ids not used before.
        """
        p = int(period)
        cent = fit_group(shapes, max_cluster_size, seed + p)
        ids: list[str | None] = [None] * len(cent)
        used = 0
        if previous is not None and p in previous.groups:
            old_ids, old_cent = previous.groups[p]
            if old_cent.shape[1] == cent.shape[1]:
                for i, j in enumerate(match_ids(old_cent, cent)):
                    if j >= 0:
                        ids[i] = old_ids[j]
            used = 1 + max(_index_of(c) for c in old_ids)
        for i in range(len(ids)):
            if ids[i] is None:
                ids[i] = cluster_id_for(p, used)
                used += 1
        self.groups[p] = ([str(c) for c in ids], cent)
        return self.assign(p, shapes)

    def rows(self) -> list[dict]:
        """One record per cluster: cluster_id, period, centroid (list of floats, exact: the
        stored centroids assign exactly as the fitted ones did)."""
        return [
            {"cluster_id": cid, "period": p, "centroid": [float(v) for v in c]}
            for p, (ids, cent) in sorted(self.groups.items())
            for cid, c in zip(ids, cent, strict=True)
        ]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> ClusterSet:
        """Inverse of :meth:`rows`; rows without a centroid (older profiles) are skipped."""
        by_period: dict[int, list[tuple[str, list[float]]]] = {}
        for r in rows:
            if r.get("centroid"):
                by_period.setdefault(int(r["period"]), []).append((r["cluster_id"], r["centroid"]))
        out = cls()
        for p, items in by_period.items():
            lengths = {len(c) for _, c in items}
            if len(lengths) != 1:
                raise ValueError(f"clusters of period {p} have centroids of lengths {lengths}")
            items.sort(key=lambda it: _index_of(it[0]))
            out.groups[p] = (
                [cid for cid, _ in items],
                np.asarray([c for _, c in items], dtype=np.float32),
            )
        return out
