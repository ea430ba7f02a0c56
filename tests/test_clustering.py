"""Shape clustering within period groups, the persisted centroids, stable assignment."""

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa

from tsmeta import jobs
from tsmeta.clustering import (
    ClusterSet,
    cluster_id_for,
    fit_group,
    match_ids,
    period_of_cluster,
    seasonal_shape,
)
from tsmeta.config import load_settings
from tsmeta.data.io import write_partitioned
from tsmeta.store.schema import clusters
from tsmeta.store.writes import read_profile


def _bumps(n: int, peak_hours: list[int], T: int = 24 * 14, start_step: int = 0, seed: int = 0):
    """n series per peak hour: a daily bump at that hour (UTC) plus noise and a trend."""
    rng = np.random.default_rng(seed)
    t = start_step + np.arange(T)
    rows = []
    for h in peak_hours:
        d = np.minimum(np.abs((t % 24) - h), 24 - np.abs((t % 24) - h))
        bump = np.exp(-0.5 * (d / 2.0) ** 2)
        rows.append(5 + 3 * bump + 0.01 * t + 0.2 * rng.normal(size=(n, T)))
    return np.concatenate(rows).astype(np.float32)


def test_shape_is_aligned_on_the_global_grid_and_ignores_level_and_trend():
    a = _bumps(1, [6], start_step=0)
    b = 100 * _bumps(1, [6], start_step=7, seed=1) - 40  # other level/scale, panel starts 07:00
    m = np.ones_like(a, dtype=bool)
    sa_, sb = seasonal_shape(a, m, 0, 24), seasonal_shape(b, m, 7, 24)
    assert np.corrcoef(sa_[0], sb[0])[0, 1] > 0.97
    assert sa_[0].argmax() == sb[0].argmax() == 6  # hour 6 UTC in both
    assert abs(float(sa_.mean())) < 1e-5 and float(sa_.std()) == pytest.approx(1.0, abs=1e-4)


def test_shape_of_missing_constant_and_empty_series():
    x = _bumps(3, [10])
    m = np.ones_like(x, dtype=bool)
    m[0, ::5] = False  # a fifth of the points missing
    x[1] = 7.0  # constant
    m[2] = False  # nothing observed
    x = np.where(m, x, np.nan)
    s = seasonal_shape(x, m, 0, 24)
    assert np.isfinite(s).all()
    assert s[0].argmax() == 10
    assert not s[1].any() and not s[2].any()


def test_fit_group_splits_distinct_shapes_and_respects_the_cap():
    x = _bumps(300, [3, 15])
    shapes = seasonal_shape(x, np.ones_like(x, dtype=bool), 0, 24)
    cent = fit_group(shapes, max_cluster_size=300)
    assert len(cent) == 2
    cs = ClusterSet({24: (["p24-0", "p24-1"], cent)})
    labels = cs.assign(24, shapes)
    assert len(set(labels[:300])) == 1 and len(set(labels[300:])) == 1
    assert labels[0] != labels[300]

    cent = fit_group(shapes, max_cluster_size=70)
    sizes = np.bincount(((shapes[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1))
    assert sizes.max() <= 70 and sizes.sum() == 600
    assert np.array_equal(cent, fit_group(shapes, max_cluster_size=70))  # deterministic
    # identical shapes (e.g. all flat) are not split: nothing tells them apart
    assert len(fit_group(np.zeros((50, 24), np.float32), 20)) == 1


def test_match_ids_and_round_trip():
    old = np.eye(3, 24, dtype=np.float32)
    assert match_ids(old, old[[2, 0, 1]]) == [2, 0, 1]
    assert match_ids(old, np.concatenate([old[[1]], np.ones((1, 24), np.float32)])) == [1, 0]
    assert match_ids(old[:1], old) == [0, -1, -1]  # more new clusters than old ids
    cs = ClusterSet({24: (["p24-0", "p24-1"], old[:2]), 0: (["aperiodic-0"], old[2:])})
    back = ClusterSet.from_rows(cs.rows())
    assert back.cluster_ids == sorted(
        back.cluster_ids, key=lambda c: (period_of_cluster(c) != 0, c)
    )
    for p in (0, 24):
        assert back.groups[p][0] == cs.groups[p][0]
        np.testing.assert_allclose(back.groups[p][1], cs.groups[p][1], atol=1e-5)
    assert cluster_id_for(0, 2) == "aperiodic-2" and cluster_id_for(168, 0) == "p168-0"


def test_refit_keeps_the_ids_of_matched_clusters():
    x = _bumps(200, [3, 15])
    shapes = seasonal_shape(x, np.ones_like(x, dtype=bool), 0, 24)
    before = ClusterSet()
    first = before.fit(24, shapes, 200)
    after = ClusterSet()
    second = after.fit(24, shapes[::-1].copy(), 200, previous=before)[::-1]
    assert np.array_equal(first, second)  # same partition, same names
    finer = ClusterSet()
    finer.fit(24, shapes, 90, previous=before)
    assert set(before.cluster_ids) <= set(finer.cluster_ids)
    assert len(finer.cluster_ids) > 2


# --- the profile step against a real database ---------------------------------------

AS_OF = date(2026, 11, 15)


def _dataset(root, n_per_shape: int, first_id: int = 0, seed: int = 0) -> pl.DataFrame:
    """Hourly series, 14 days: daily bumps at 03:00 and 15:00, weekly, and white noise."""
    T = 24 * 14
    rng = np.random.default_rng(seed)
    daily = _bumps(n_per_shape, [3, 15], T, seed=seed)
    t = np.arange(T)
    weekly = 5 + 3 * ((t // 24) % 7 < 5) * np.sin(np.pi * (t % 24) / 24) ** 4
    weekly = weekly + 0.2 * rng.normal(size=(n_per_shape, T))
    noise = rng.normal(size=(n_per_shape, T))
    values = np.concatenate([daily, weekly, noise]).astype(np.float64)
    n = len(values)
    ids = np.array([f"s{first_id + i:05d}" for i in range(n)])
    ts = np.datetime64("2026-11-01T00:00", "us") + np.arange(T) * np.timedelta64(3600, "s")
    frame = pl.DataFrame(
        {"series_id": np.repeat(ids, T), "ts": np.tile(ts, n), "value": values.ravel()}
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    write_partitioned(frame, root, part=f"part-{first_id:05d}")
    return frame


def _profile(settings, recluster=False):
    out = jobs.profile_series(settings, AS_OF, "r", recluster=recluster)
    prof = read_profile(jobs.engine_for(settings))
    return out, dict(prof.select("series_id", "cluster_id").iter_rows())


def _centroids(settings):
    with jobs.engine_for(settings).connect() as conn:
        return {r.cluster_id: r.centroid for r in conn.execute(sa.select(clusters))}


def test_profile_clusters_by_period_and_shape_and_assigns_stably(tmp_path, db_url):
    root = tmp_path / "dataset"
    _dataset(root, 60)
    settings = load_settings(
        data_dir=str(tmp_path), dataset_path=str(root), database_url=db_url,
        history_days=14, max_cluster_size=80, read_chunk_rows=5_000,
    )  # fmt: skip
    out, first = _profile(settings)
    assert out["series"] == 240 and max(out["clusters"].values()) <= 80
    assert {period_of_cluster(c) for c in out["clusters"]} == {0, 24, 168}
    # the two daily shapes land in different clusters, each shape in one
    bump3 = {first[f"s{i:05d}"] for i in range(60)}
    bump15 = {first[f"s{i:05d}"] for i in range(60, 120)}
    assert len(bump3) == 1 and len(bump15) == 1 and bump3 != bump15
    stored = _centroids(settings)
    assert set(stored) == set(out["clusters"]) and all(len(c) in (24, 168) for c in stored.values())

    again, second = _profile(settings)  # same data: same clusters, nothing refitted
    assert second == first and again["fitted_periods"] == [] and _centroids(settings) == stored

    _dataset(root, 20, first_id=1000, seed=3)  # new series arrive in the next part file
    later, third = _profile(settings)
    assert later["series"] == 320 and later["fitted_periods"] == [] and later["new_clusters"] == []
    assert {k: third[k] for k in first} == first  # old series keep their clusters
    assert {third[f"s{1000 + i:05d}"] for i in range(20)} == bump3  # new 03:00 bumps join them
    assert _centroids(settings) == stored

    finer, fourth = _profile(settings.model_copy(update={"max_cluster_size": 30}), recluster=True)
    assert finer["recluster"] and max(finer["clusters"].values()) <= 30
    assert len(finer["clusters"]) > len(out["clusters"])


def test_profile_reads_in_bounded_chunks_with_the_same_result(tmp_path):
    root = tmp_path / "dataset"
    for k in range(3):  # three part files per date, disjoint id ranges
        _dataset(root, 10, first_id=1000 * k, seed=k)
    whole = load_settings(data_dir=str(tmp_path / "a"), dataset_path=str(root), history_days=14)
    small = whole.model_copy(update={"data_dir": tmp_path / "b", "read_chunk_rows": 1,
                                     "database_url": f"sqlite:///{tmp_path / 'b.db'}",
                                     "chunk_series": 7})  # fmt: skip
    a = jobs.profile_series(whole, AS_OF, "r")
    b = jobs.profile_series(small, AS_OF, "r")
    assert a["clusters"] == b["clusters"] and a["series"] == b["series"] == 120
    pa = read_profile(jobs.engine_for(whole)).sort("series_id")
    pb = read_profile(jobs.engine_for(small)).sort("series_id")
    assert pa.equals(pb)


def test_profile_refuses_an_empty_window(tmp_path):
    root = tmp_path / "dataset"
    _dataset(root, 2)
    settings = load_settings(data_dir=str(tmp_path), dataset_path=str(root), history_days=3)
    with pytest.raises(Exception, match="no data"):
        jobs.profile_series(settings, AS_OF + timedelta(days=30), "r")
