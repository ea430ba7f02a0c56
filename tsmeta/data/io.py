"""Readers and writers for the long format.

Dataset layout (Hive style, one folder per UTC date, any number of part files)::

    <dataset>/date=2026-11-01/part-00000.parquet
    <dataset>/date=2026-11-02/part-00000.parquet

Readers are lazy and touch only the date folders asked for. Writes go to a temporary
file renamed into place, so a crashed write never leaves a half-written part, and writing
the same part again replaces it (idempotent).
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl

from tsmeta.data.schema import COLUMNS, EmptyInputError, validate_long_frame

__all__ = [
    "dataset_dates",
    "scan_dataset",
    "read_window",
    "write_partitioned",
    "write_parquet_atomic",
    "read_csv",
    "read_sql_table",
]


def _as_date(d: date | datetime | str) -> date:
    if isinstance(d, datetime):
        return d.date()
    if isinstance(d, date):
        return d
    try:
        return date.fromisoformat(str(d))
    except ValueError:
        raise ValueError(f"date {d!r} is not an ISO date: expected YYYY-MM-DD") from None


def dataset_dates(path: str | Path) -> list[date]:
    """The dates present in a partitioned dataset, sorted."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} does not exist: generate one with `tsmeta generate` or "
            "set TSMETA_DATASET_PATH to your partitioned Parquet dataset"
        )
    out = []
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith("date="):
            out.append(_as_date(child.name[5:]))
    return sorted(out)


def scan_dataset(path: str | Path, start: date | str, end: date | str) -> pl.LazyFrame:
    """Lazy frame over the dates ``[start, end)`` (end exclusive); reads nothing yet."""
    root = Path(path)
    first, stop = _as_date(start), _as_date(end)
    if stop <= first:
        raise ValueError(f"empty date range [{first}, {stop}): end must be after start")
    files: list[str] = []
    day = first
    while day < stop:
        folder = root / f"date={day.isoformat()}"
        if folder.is_dir():
            files.extend(str(p) for p in sorted(folder.glob("*.parquet")))
        day += timedelta(days=1)
    if not files:
        available = dataset_dates(root)
        span = f"{available[0]} .. {available[-1]}" if available else "no dates"
        raise EmptyInputError(
            f"no data in {root} for dates [{first}, {stop}): the dataset holds {span}; "
            "pick a date range inside it"
        )
    return pl.scan_parquet(files).select(COLUMNS)


def read_window(
    path: str | Path, start: date | str, end: date | str, freq: str = "h"
) -> pl.DataFrame:
    """Read and validate the dates ``[start, end)`` of a partitioned dataset."""
    return validate_long_frame(scan_dataset(path, start, end), freq)


def write_parquet_atomic(frame: pl.DataFrame, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    frame.write_parquet(tmp, statistics=True)
    os.replace(tmp, target)


def write_partitioned(frame: pl.DataFrame, path: str | Path, part: str = "part-00000") -> int:
    """Write a long frame into ``path/date=*/<part>.parquet``; returns files written.

    Rows are sorted by (series_id, ts) within each file so readers can slice cheaply.
    """
    root = Path(path)
    frame = frame.select(COLUMNS).with_columns(pl.col("ts").dt.date().alias("_date"))
    n = 0
    for (day,), group in frame.partition_by("_date", as_dict=True, maintain_order=False).items():
        out = group.drop("_date").sort("series_id", "ts")
        write_parquet_atomic(out, root / f"date={day.isoformat()}" / f"{part}.parquet")
        n += 1
    return n


def read_csv(path: str | Path, freq: str = "h", **kwargs: object) -> pl.DataFrame:
    """Read a long-format CSV (``series_id,ts,value``) and validate it."""
    frame = pl.read_csv(path, try_parse_dates=True, **kwargs)  # type: ignore[arg-type]
    return validate_long_frame(frame, freq)


def read_sql_table(
    url: str,
    table: str,
    freq: str = "h",
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pl.DataFrame:
    """Read ``series_id, ts, value`` from a SQL table (optionally ts in [start, end))."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    meta = sa.MetaData()
    try:
        tbl = sa.Table(table, meta, autoload_with=engine)
    except sa.exc.NoSuchTableError:
        raise ValueError(f"table {table!r} does not exist in {engine.url!r}") from None
    missing = [c for c in COLUMNS if c not in tbl.c]
    if missing:
        raise ValueError(
            f"table {table!r} lacks column(s) {missing}: expected {list(COLUMNS)}, found "
            f"{list(tbl.c.keys())}; create a view that renames them"
        )
    query = sa.select(*(tbl.c[c] for c in COLUMNS))
    if start is not None:
        query = query.where(tbl.c.ts >= start)
    if end is not None:
        query = query.where(tbl.c.ts < end)
    with engine.connect() as conn:
        frame = pl.read_database(query, connection=conn)
    engine.dispose()
    return validate_long_frame(frame, freq)
