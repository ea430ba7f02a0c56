from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from tsmeta.data.panel import Panel, build_panel, steps_since_epoch
from tsmeta.data.schema import validate_long_frame
from tsmeta.data.synthetic import generate_frame


def naive_panel(frame: pl.DataFrame, start: datetime, n_steps: int, ids: list):
    """Reference: a Python loop over rows."""
    values = np.full((len(ids), n_steps), np.nan, dtype=np.float32)
    mask = np.zeros((len(ids), n_steps), dtype=bool)
    row_of = {s: i for i, s in enumerate(ids)}
    for sid, ts, v in frame.iter_rows():
        step = int((ts.replace(tzinfo=None) - start) / timedelta(hours=1))
        if sid in row_of and 0 <= step < n_steps and v is not None:
            values[row_of[sid], step] = v
            mask[row_of[sid], step] = True
    return values, mask


@pytest.fixture(scope="module")
def long_frame():
    f, _, _ = generate_frame(40, "h", days=3, seed=11)
    # add explicit null values too: both absent rows and nulls are missing points
    f = f.with_columns(
        pl.when(pl.int_range(pl.len()) % 17 == 0)
        .then(None)
        .otherwise(pl.col("value"))
        .alias("value")
    )
    return validate_long_frame(f)


def test_build_panel_matches_naive_reference(long_frame):
    p = build_panel(long_frame, "h")
    ids = sorted(long_frame["series_id"].unique().to_list())
    ref_v, ref_m = naive_panel(long_frame, p.start, p.n_steps, ids)
    assert list(p.series_ids) == ids
    np.testing.assert_array_equal(p.mask, ref_m)
    np.testing.assert_array_equal(np.nan_to_num(p.values, nan=-1), np.nan_to_num(ref_v, nan=-1))
    assert np.isnan(p.values[~p.mask]).all()


def test_window_and_explicit_ids(long_frame):
    start = datetime(2026, 11, 2)
    ids = np.array(["s0000003", "zzz-missing", "s0000001"], dtype=object)
    p = build_panel(long_frame, "h", start, start + timedelta(hours=10), ids)
    ref_v, ref_m = naive_panel(long_frame, start, 10, list(ids))
    assert p.values.shape == (3, 10)
    np.testing.assert_array_equal(p.mask, ref_m)
    assert not p.mask[1].any()  # unknown id: all missing, no crash


def test_chunks_equal_full_panel(long_frame):
    full = build_panel(long_frame, "h")
    chunks = list(full.chunks(7))
    assert [c.n_series for c in chunks] == [7] * 5 + [5]
    np.testing.assert_array_equal(np.concatenate([c.mask for c in chunks]), full.mask)
    np.testing.assert_array_equal(np.concatenate([c.series_ids for c in chunks]), full.series_ids)


def test_start_step_and_timestamps(long_frame):
    p = build_panel(long_frame, "h")
    assert p.start_step == steps_since_epoch(datetime(2026, 11, 1), "h")
    assert p.timestamps()[1] - p.timestamps()[0] == np.timedelta64(1, "h")
    w = p.window(24, 48)
    assert w.start == datetime(2026, 11, 2) and w.n_steps == 24


def test_panel_shape_checks():
    with pytest.raises(ValueError, match="equal 2-D"):
        Panel(
            np.zeros((2, 3)),
            np.zeros((2, 4), bool),
            np.array(["a", "b"]),
            datetime(2026, 1, 1),
            "h",
        )
    with pytest.raises(ValueError, match="series_ids"):
        Panel(np.zeros((2, 3)), np.zeros((2, 3), bool), np.array(["a"]), datetime(2026, 1, 1), "h")


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_scatter_panel_equals_validate_then_build(long_frame, order):
    from tsmeta.data.panel import scatter_panel

    raw = long_frame.with_columns(pl.col("value").cast(pl.Float32))
    if order == "shuffled":  # many runs per series: still placed correctly
        raw = raw.sample(fraction=1.0, shuffle=True, seed=3)
    start = datetime(2026, 11, 1, 5)  # rows before the start and after the end are ignored
    end = datetime(2026, 11, 3, 7)
    ref = build_panel(long_frame, "h", start, end)
    got = scatter_panel(raw, "h", start, end)
    assert list(got.series_ids) == list(ref.series_ids)
    assert np.array_equal(got.mask, ref.mask)
    assert np.array_equal(got.values, ref.values, equal_nan=True)
    assert got.start == ref.start and got.freq == "h"


def test_scatter_panel_rejects_what_validation_rejects(long_frame):
    from tsmeta.data.panel import scatter_panel
    from tsmeta.data.schema import DuplicateRowsError, NonFiniteValueError, OffGridTimestampError

    start, end = datetime(2026, 11, 1), datetime(2026, 11, 4)
    with pytest.raises(DuplicateRowsError, match="share a"):
        scatter_panel(pl.concat([long_frame, long_frame.head(3)]), "h", start, end)
    off = long_frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.col("ts") + timedelta(minutes=30))
        .otherwise(pl.col("ts")).alias("ts")
    )  # fmt: skip
    with pytest.raises(OffGridTimestampError, match="grid"):
        scatter_panel(off, "h", start, end)
    nan = long_frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 2)
        .then(float("nan"))
        .otherwise(pl.col("value"))
        .alias("value")
    )
    with pytest.raises(NonFiniteValueError):
        scatter_panel(nan, "h", start, end)
    ints = long_frame.with_columns(pl.col("series_id").str.slice(1).cast(pl.Int64))
    assert scatter_panel(ints, "h", start, end).series_ids.dtype.kind == "i"
