from datetime import UTC, datetime, timedelta

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
