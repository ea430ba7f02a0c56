import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from tsmeta.data.io import scan_dataset
from tsmeta.data.schema import validate_long_frame
from tsmeta.data.synthetic import (
    ANOMALY_KINDS,
    BLOCK,
    generate_blocks,
    generate_frame,
    read_labels,
    read_series_meta,
    write_synthetic_dataset,
)


def test_same_seed_same_data():
    a, la, ma = generate_frame(200, "h", 3, seed=5)
    b, lb, mb = generate_frame(200, "h", 3, seed=5)
    assert a.equals(b) and la.equals(lb) and ma.equals(mb)


def test_different_seed_different_data():
    a, _, _ = generate_frame(50, "h", 2, seed=1)
    b, _, _ = generate_frame(50, "h", 2, seed=2)
    assert not a.equals(b)


def test_output_does_not_depend_on_sharding(tmp_path):
    """Random streams are per block of series, so shard size changes nothing."""
    n = BLOCK + 50
    a = write_synthetic_dataset(tmp_path / "a", n, "h", 1, seed=3, shard_blocks=1)
    b = write_synthetic_dataset(tmp_path / "b", n, "h", 1, seed=3, shard_blocks=2)
    assert (a["shards"], b["shards"]) == (2, 1)
    key = ["series_id", "ts"]
    fa = scan_dataset(tmp_path / "a", "2026-11-01", "2026-11-02").collect().sort(key)
    fb = scan_dataset(tmp_path / "b", "2026-11-01", "2026-11-02").collect().sort(key)
    assert fa.height > n * 20 and fa.equals(fb)
    assert (
        read_labels(tmp_path / "a")
        .sort("series_id", "start")
        .equals(read_labels(tmp_path / "b").sort("series_id", "start"))
    )


def test_generated_frame_is_valid_long_format():
    f, labels, meta = generate_frame(300, "h", 14, seed=0)
    validate_long_frame(f, "h")
    assert set(meta["period"].unique().to_list()) == {0, 24, 168}
    assert set(labels["kind"].unique().to_list()) <= set(ANOMALY_KINDS)
    assert labels.height > 0
    assert (labels["end"] > labels["start"]).all()
    # magnitudes span orders: scale in 10^[-1, 4]
    assert meta["scale"].max() / meta["scale"].min() > 100
    # some series have missing points (absent rows)
    per_series = f.group_by("series_id").len()["len"]
    assert per_series.min() < 14 * 24 and per_series.max() == 14 * 24


def test_daily_frequency_has_weekly_period():
    f, _, meta = generate_frame(100, "d", 56, seed=0)
    validate_long_frame(f, "d")
    assert set(meta["period"].unique().to_list()) == {0, 7}


@pytest.mark.parametrize("freq,spd", [("5min", 288), ("15min", 96), ("1min", 1440)])
def test_minute_frequencies_scale_periods_and_lengths(freq, spd):
    f, labels, meta = generate_frame(60, freq, 3, seed=0, anomaly_rate=0.2)
    validate_long_frame(f, freq)
    assert set(meta["period"].unique().to_list()) <= {0, spd, 7 * spd}
    assert f.group_by("series_id").len()["len"].max() == 3 * spd
    # anomaly lengths are in hours whatever the step: a level shift lasts 12-48 hours
    shifts = labels.filter(pl.col("kind") == "level_shift")
    hours = ((shifts["end"] - shifts["start"]).dt.total_minutes() / 60).to_list()
    assert hours and all(0 < h <= 48 for h in hours) and max(hours) > 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_series"):
        next(generate_blocks(0))
    with pytest.raises(ValueError, match="anomaly_rate"):
        next(generate_blocks(10, anomaly_rate=1.5))


def test_written_dataset_roundtrip_and_shards(tmp_path):
    root = tmp_path / "ds"
    m = write_synthetic_dataset(root, 120, "h", 3, "2026-11-01", seed=4, shard_blocks=1)
    assert json.loads((root / "_meta" / "manifest.json").read_text())["rows"] == m["rows"]
    dates = sorted(p.name for p in root.iterdir() if p.name.startswith("date="))
    assert dates == ["date=2026-11-01", "date=2026-11-02", "date=2026-11-03"]
    f = validate_long_frame(scan_dataset(root, "2026-11-01", "2026-11-04"))
    ref, ref_labels, ref_meta = generate_frame(120, "h", 3, "2026-11-01", seed=4)
    key = ["series_id", "ts"]
    assert f.sort(key).equals(validate_long_frame(ref).sort(key))
    assert (
        read_labels(root).sort("series_id", "start").equals(ref_labels.sort("series_id", "start"))
    )
    assert read_series_meta(root).equals(ref_meta)
    # re-running rewrites the same files: no duplicates
    write_synthetic_dataset(root, 120, "h", 3, "2026-11-01", seed=4, shard_blocks=1)
    again = validate_long_frame(scan_dataset(root, "2026-11-01", "2026-11-04"))
    assert again.height == f.height


def test_business_family_phenomena():
    from tsmeta.data.business import BUSINESS_KINDS, CONTEXT_KINDS

    frame, labels, meta = generate_frame(300, "h", 42, "2026-09-07", seed=3, family="business")
    again, _, _ = generate_frame(300, "h", 42, "2026-09-07", seed=3, family="business")
    assert frame.equals(again)
    assert (frame["value"] >= 0).all()
    # one shared holiday for every series; breaks and anomalies of the documented kinds
    hol = labels.filter(pl.col("kind") == "holiday")
    assert hol.height == 300 and hol["start"].n_unique() == 1
    assert hol["start"][0].weekday() == 2  # a Wednesday, five weeks in
    assert set(labels["kind"]) <= set(BUSINESS_KINDS) | set(CONTEXT_KINDS)
    assert set(meta["period"].unique()) == {0, 168}
    # the holiday runs below the same weekday a week before, for nearly every series
    day = hol["start"][0]
    on = (
        frame.filter(pl.col("ts").dt.date() == day.date())
        .group_by("series_id")
        .agg(pl.col("value").sum())
    )
    before = (
        frame.filter(pl.col("ts").dt.date() == (day - timedelta(days=7)).date())
        .group_by("series_id")
        .agg(pl.col("value").sum())
    )
    ratio = on.join(before, on="series_id").select(pl.col("value") / pl.col("value_right"))["value"]
    assert ratio.median() < 0.75
    # counts: small levels are whole numbers; missing points are absent rows (~0.5%)
    small = meta.filter(pl.col("scale") < 50)["series_id"]
    assert (frame.filter(pl.col("series_id").is_in(small.to_list()))["value"] % 1 == 0).all()
    assert 0.002 < 1 - frame.height / (300 * 42 * 24) < 0.01
    with pytest.raises(ValueError, match="hourly"):
        generate_frame(10, "d", 42, family="business")


def test_heavy_family_is_the_default_corpus_with_heavy_tailed_noise():
    """The same seasons, anomalies and labels as the default family; only the noise is a
    Student's t: its standardised seasonal differences have a far heavier tail."""
    frame, labels, meta = generate_frame(200, "h", 21, "2026-09-07", seed=5, family="heavy")
    base, base_labels, base_meta = generate_frame(200, "h", 21, "2026-09-07", seed=5)
    assert labels.equals(base_labels) and meta.equals(base_meta)

    # the two differ by the two noises: the t's tail dominates their difference
    both = frame.join(base, on=["series_id", "ts"])
    d = both.group_by("series_id").agg((pl.col("value") - pl.col("value_right")).alias("d"))
    kurt = [float(np.mean((x - x.mean()) ** 4) / np.var(x) ** 2)
            for x in (np.asarray(v) for v in d["d"])]  # fmt: skip
    assert np.median(kurt) > 3.6  # two normals: 3 (+- 0.2 over 504 points)
