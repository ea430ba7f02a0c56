from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa

from tsmeta.data.io import (
    dataset_dates,
    read_csv,
    read_sql_table,
    read_window,
    scan_dataset,
    write_partitioned,
)
from tsmeta.data.schema import EmptyInputError, MissingColumnError
from tsmeta.data.synthetic import generate_frame


@pytest.fixture(scope="module")
def frame():
    f, _, _ = generate_frame(20, "h", 4, "2026-11-01", seed=2)
    return f


def test_partitioned_write_and_lazy_date_read(tmp_path, frame):
    assert write_partitioned(frame, tmp_path) == 4
    assert [str(d) for d in dataset_dates(tmp_path)] == [
        "2026-11-01",
        "2026-11-02",
        "2026-11-03",
        "2026-11-04",
    ]
    lf = scan_dataset(tmp_path, "2026-11-02", "2026-11-04")
    assert isinstance(lf, pl.LazyFrame)
    # only the two requested partitions are in the plan
    plan = lf.explain()
    assert "2026-11-01" not in plan and "2026-11-04" not in plan
    got = read_window(tmp_path, "2026-11-02", "2026-11-04")
    assert got["ts"].min() == datetime(2026, 11, 2, tzinfo=UTC)
    assert got["ts"].max() == datetime(2026, 11, 3, 23, tzinfo=UTC)
    expected = frame.filter((pl.col("ts") >= got["ts"].min()) & (pl.col("ts") <= got["ts"].max()))
    assert got.height == expected.height


def test_rewrite_is_idempotent(tmp_path, frame):
    write_partitioned(frame, tmp_path)
    write_partitioned(frame, tmp_path)
    assert read_window(tmp_path, "2026-11-01", "2026-11-05").height == frame.height
    assert not list(tmp_path.rglob("*.tmp"))


def test_date_range_outside_dataset(tmp_path, frame):
    write_partitioned(frame, tmp_path)
    with pytest.raises(EmptyInputError, match="holds 2026-11-01 .. 2026-11-04"):
        scan_dataset(tmp_path, "2027-01-01", "2027-01-03")
    with pytest.raises(ValueError, match="end must be after start"):
        scan_dataset(tmp_path, "2026-11-03", "2026-11-02")
    with pytest.raises(FileNotFoundError, match="tsmeta generate"):
        dataset_dates(tmp_path / "nope")


def test_csv_reader(tmp_path, frame):
    path = tmp_path / "x.csv"
    frame.head(100).write_csv(path)
    assert read_csv(path).height == 100
    frame.head(5).rename({"value": "y"}).write_csv(path)
    with pytest.raises(MissingColumnError, match="'y': 'value'"):
        read_csv(path)


def test_sql_table_reader(db_url, frame):
    engine = sa.create_engine(db_url)
    small = frame.head(48).with_columns(pl.col("value").cast(pl.Float64))
    with engine.begin() as conn:
        conn.execute(sa.text("drop table if exists metrics"))
        conn.execute(
            sa.text(
                "create table metrics (series_id varchar(32), ts timestamp, value double precision)"
            )
        )
        conn.execute(
            sa.text("insert into metrics values (:series_id, :ts, :value)"),
            small.with_columns(pl.col("ts").dt.replace_time_zone(None)).to_dicts(),
        )
    engine.dispose()
    got = read_sql_table(db_url, "metrics")
    assert got.height == 48
    start = datetime(2026, 11, 1, 10)
    got = read_sql_table(db_url, "metrics", start=start, end=start + timedelta(hours=5))
    assert got.height == 5
    with pytest.raises(ValueError, match="does not exist"):
        read_sql_table(db_url, "nope")


def _row_grouped_dataset(
    root, frame, rows_per_group: int, name: str = "part-00000.parquet"
) -> None:
    """One part file per date with small row groups (as a large single-writer dataset)."""
    from tsmeta.data.io import write_parquet_atomic  # noqa: F401 - same layout, custom groups

    dated = frame.with_columns(pl.col("ts").dt.date().alias("_d"))
    for (day,), g in dated.partition_by("_d", as_dict=True).items():
        folder = root / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        g.drop("_d").sort("series_id", "ts").write_parquet(
            folder / name, row_group_size=rows_per_group, statistics=True
        )


@pytest.mark.parametrize("layout", ["row_groups", "part_files", "large_part_files"])
def test_window_is_read_in_bounded_chunks_of_whole_series(tmp_path, frame, layout):
    from tsmeta.data.io import iter_window_panels, plan_series_chunks, read_window
    from tsmeta.data.panel import build_panel

    root = tmp_path / "ds"
    if layout == "row_groups":
        _row_grouped_dataset(root, frame, rows_per_group=48)
    elif layout == "part_files":  # four writers, each its own id range
        ids = sorted(frame["series_id"].unique().to_list())
        for k in range(4):
            part = frame.filter(pl.col("series_id").is_in(ids[k * 5 : k * 5 + 5]))
            write_partitioned(part, root, part=f"part-{k:05d}")
    else:  # two writers whose parts hold more rows than a chunk (shards of short steps)
        ids = sorted(frame["series_id"].unique().to_list())
        for k in range(2):
            part = frame.filter(pl.col("series_id").is_in(ids[k * 10 : k * 10 + 10]))
            _row_grouped_dataset(root, part, rows_per_group=48, name=f"part-{k:05d}.parquet")
        assert all(p.stat().st_size for p in root.glob("date=*/part-00001.parquet"))
    plan = plan_series_chunks(root, "2026-11-01", "2026-11-05", target_rows=400)
    assert len(plan) >= 4 and all(c.rows <= frame.height for c in plan)
    read = [c.read().height for c in plan]
    assert max(read) <= 400 + 4 * 48 and sum(read) == frame.height, read  # bounded, complete
    panels = list(iter_window_panels(root, "2026-11-01", "2026-11-05", "h", 3, target_rows=400))
    got = np.concatenate([p.series_ids for p in panels])
    assert sorted(got) == sorted(frame["series_id"].unique()) and len(set(got)) == len(got)
    assert max(p.n_series for p in panels) <= 3
    whole = build_panel(read_window(root, "2026-11-01", "2026-11-05"), "h",
                        datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))  # fmt: skip
    row = {s: i for i, s in enumerate(whole.series_ids)}
    for p in panels:
        idx = [row[s] for s in p.series_ids]
        assert np.array_equal(p.values, whole.values[idx], equal_nan=True)
        assert np.array_equal(p.mask, whole.mask[idx])


def test_unsorted_files_still_read_every_series_once(tmp_path, frame, caplog):
    from tsmeta.data.io import iter_window_panels

    root = tmp_path / "ds"
    dated = frame.sample(fraction=1.0, shuffle=True, seed=1)
    dated = dated.with_columns(pl.col("ts").dt.date().alias("_d"))
    for (day,), g in dated.partition_by("_d", as_dict=True).items():
        folder = root / f"date={day.isoformat()}"
        folder.mkdir(parents=True)
        g.drop("_d").write_parquet(folder / "p.parquet", row_group_size=30, statistics=True)
    panels = list(iter_window_panels(root, "2026-11-01", "2026-11-05", "h", 100, target_rows=500))
    got = np.concatenate([p.series_ids for p in panels])
    assert sorted(got) == sorted(frame["series_id"].unique())
    assert sum(int(p.mask.sum()) for p in panels) == frame["value"].is_not_null().sum()
    assert "not sorted by series_id" in caplog.text
