"""Readers and writers for the long format.

Dataset layout (Hive style, one folder per UTC date, any number of part files)::

    <dataset>/date=2026-11-01/part-00000.parquet
    <dataset>/date=2026-11-02/part-00000.parquet

Readers are lazy and touch only the date folders asked for. Writes go to a temporary
file renamed into place, so a crashed write never leaves a half-written part, and writing
the same part again replaces it (idempotent).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from tsmeta.data.dataset_step import check_dataset_freq
from tsmeta.data.panel import Panel, scatter_panel
from tsmeta.data.schema import COLUMNS, DuplicateRowsError, EmptyInputError, validate_long_frame

log = logging.getLogger("tsmeta")

__all__ = [
    "dataset_dates",
    "scan_dataset",
    "read_window",
    "window_files",
    "plan_series_chunks",
    "iter_window_panels",
    "write_partitioned",
    "check_no_overlap",
    "write_parquet_atomic",
    "read_csv",
    "read_long_file",
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


def window_files(
    path: str | Path, start: date | str, end: date | str, dates: frozenset[date] | None = None
) -> dict[date, list[Path]]:
    """The part files of each date in ``[start, end)`` (dates without a folder are absent;
    with ``dates``, only those dates)."""
    root = Path(path)
    first, stop = _as_date(start), _as_date(end)
    if stop <= first:
        raise ValueError(f"empty date range [{first}, {stop}): end must be after start")
    out: dict[date, list[Path]] = {}
    day = first
    while day < stop:
        folder = root / f"date={day.isoformat()}"
        if (dates is None or day in dates) and folder.is_dir():
            parts = sorted(folder.glob("*.parquet"))
            if parts:
                out[day] = parts
        day += timedelta(days=1)
    if not out:
        available = dataset_dates(root)
        span = f"{available[0]} .. {available[-1]}" if available else "no dates"
        raise EmptyInputError(
            f"no data in {root} for dates [{first}, {stop}): the dataset holds {span}; "
            "pick a date range inside it"
        )
    return out


def scan_dataset(path: str | Path, start: date | str, end: date | str) -> pl.LazyFrame:
    """Lazy frame over the dates ``[start, end)`` (end exclusive); reads nothing yet."""
    files = [str(p) for parts in window_files(path, start, end).values() for p in parts]
    return pl.scan_parquet(files).select(COLUMNS)


@dataclass(frozen=True)
class SeriesChunk:
    """Files to read for one chunk of series, and the id range that selects them.

    ``low``/``high`` (inclusive/exclusive, None = open) bound ``series_id`` when the files
    also hold other series; a chunk of whole part files needs no filter.
    """

    files: tuple[str, ...]
    rows: int  # rows in the files (an upper bound on the rows read)
    low: str | int | None = None
    high: str | int | None = None

    def read(self) -> pl.DataFrame:
        lazy = pl.scan_parquet(list(self.files)).select(COLUMNS)
        if self.low is not None:
            lazy = lazy.filter(pl.col("series_id") >= self.low)
        if self.high is not None:
            lazy = lazy.filter(pl.col("series_id") < self.high)
        return lazy.collect()


def _file_stats(path: Path) -> tuple[int, list[tuple[object, object, int]]]:
    """(rows, [(min id, max id, rows) per row group]) from the Parquet footer."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    col = names.index("series_id") if "series_id" in names else None
    groups = []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        st = rg.column(col).statistics if col is not None else None
        if st is None or not st.has_min_max:
            groups.append((None, None, rg.num_rows))
        else:
            groups.append((st.min, st.max, rg.num_rows))
    return meta.num_rows, groups


def plan_series_chunks(
    path: str | Path, start: date | str, end: date | str, target_rows: int = 50_000_000,
    dates: frozenset[date] | None = None,
) -> list[SeriesChunk]:  # fmt: skip
    """Split the window ``[start, end)`` into chunks that each hold whole series.

    Memory stays bounded by ``target_rows`` rows per chunk, decided from the Parquet
    footers alone (nothing is read):

    * when every date has the same part files and each part holds its own range of ids
      (what ``tsmeta generate`` and per-shard writers produce), a chunk is one part name
      across all dates, where that is at most ``target_rows`` rows;
    * otherwise the window is cut into id ranges with about ``target_rows`` rows each,
      from the row groups' id statistics; each chunk reads only the row groups that can
      hold its range (files sorted by ``series_id``, as ``write_partitioned`` writes them,
      make that cheap).
    """
    if target_rows < 1:
        raise ValueError(f"target_rows must be >= 1, received {target_rows}")
    by_date = window_files(path, start, end, dates)
    stats = {p: _file_stats(p) for parts in by_date.values() for p in parts}
    total = sum(rows for rows, _ in stats.values())
    everything = tuple(str(p) for p in stats)
    if total <= target_rows:
        return [SeriesChunk(everything, total)]

    names = [tuple(p.name for p in parts) for parts in by_date.values()]
    if len(set(names)) == 1 and len(names[0]) > 1:
        spans = []
        for name in names[0]:
            files = [parts[[p.name for p in parts].index(name)] for parts in by_date.values()]
            groups = [g for f in files for g in stats[f][1]]
            if any(lo is None for lo, _, _ in groups):
                break
            spans.append((min(g[0] for g in groups), max(g[1] for g in groups), files))
            if sum(stats[f][0] for f in files) > target_rows:  # a part too large to read at
                break  # once (a shard of short steps): cut by row groups below instead
        else:
            ordered = sorted(spans, key=lambda s: s[0])
            if all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
                return [
                    SeriesChunk(tuple(map(str, files)), sum(stats[f][0] for f in files))
                    for _, _, files in ordered
                ]

    groups = [g for _, gs in stats.values() for g in gs]
    if any(lo is None for lo, _, _ in groups):
        raise ValueError(
            f"the dataset {path} has {total:,} rows in [{start}, {end}) and its Parquet files "
            "carry no series_id statistics, so it cannot be read in bounded chunks; rewrite "
            "it with statistics (tsmeta.data.io.write_partitioned does) or raise target_rows"
        )
    # cut points: row-group minimum ids, so that about target_rows rows fall between cuts
    n_chunks = math.ceil(total / target_rows)
    by_low = sorted(groups, key=lambda g: g[0])
    cuts, acc, per = [], 0, total / n_chunks
    for lo, _, rows in by_low:
        if acc >= per * (len(cuts) + 1) and (not cuts or lo > cuts[-1]):
            cuts.append(lo)
        acc += rows
    bounds = [None, *cuts, None]
    unsorted = any(
        a[1] > b[0] for _, gs in stats.values() for a, b in zip(gs, gs[1:], strict=False)
    )
    if unsorted:
        log.warning(
            "the Parquet files of %s are not sorted by series_id: each of the %d chunks reads "
            "most of them; sort the rows by (series_id, ts) when writing",
            path,
            len(bounds) - 1,
        )
    return [
        SeriesChunk(everything, total, lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]


def iter_window_panels(
    path: str | Path,
    start: date | str,
    end: date | str,
    freq: str = "h",
    chunk_series: int = 8192,
    target_rows: int = 50_000_000,
    dates: frozenset[date] | None = None,
) -> Iterator[Panel]:
    """Panels of at most ``chunk_series`` series covering ``[start, end)``, read in chunks.

    Every series of the window appears in exactly one panel, with all its points; peak
    memory is about two chunks of ``target_rows`` rows and their panels (the next chunk is
    read in a background thread while the caller works on the current one). ``dates``:
    read only those days of the window (the others are unobserved in the panels).
    """
    check_dataset_freq(path, freq)
    first, stop = _as_date(start), _as_date(end)
    begin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    finish = datetime(stop.year, stop.month, stop.day, tzinfo=UTC)

    def load(chunk: SeriesChunk) -> Panel | None:
        frame = chunk.read()
        return scatter_panel(frame, freq, begin, finish) if frame.height else None

    plan = plan_series_chunks(path, first, stop, target_rows, dates)
    # one chunk is read (Parquet decoding, scatter: mostly outside the GIL) while the
    # caller computes on the previous one; at most two chunks are held at once
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsmeta-read") as pool:
        pending = pool.submit(load, plan[0])
        for nxt in [*plan[1:], None]:
            panel = pending.result()
            pending = pool.submit(load, nxt) if nxt is not None else None
            if panel is not None:
                yield from panel.chunks(chunk_series)
            del panel


def read_window(
    path: str | Path, start: date | str, end: date | str, freq: str = "h"
) -> pl.DataFrame:
    """Read and validate the dates ``[start, end)`` of a partitioned dataset."""
    check_dataset_freq(path, freq)
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


def check_no_overlap(frame: pl.DataFrame, path: str | Path, part: str) -> None:
    """Raise :class:`DuplicateRowsError` when points of ``frame`` are already in the
    dataset under another part file (re-writing ``part`` itself replaces it).

    Reads only the (series_id, ts) columns of the other files of the dates ``frame`` covers.
    """
    root = Path(path)
    days = frame.get_column("ts").dt.date().unique().sort().to_list()
    others = [
        str(f)
        for day in days
        for f in sorted((root / f"date={day.isoformat()}").glob("*.parquet"))
        if f.name != f"{part}.parquet"
    ]
    if not others:
        return
    keys = frame.select("series_id", "ts").lazy()
    stored = pl.scan_parquet(others, include_file_paths="_file").select("series_id", "ts", "_file")
    clash = (
        stored.join(keys, on=["series_id", "ts"], how="semi")
        .group_by("_file")
        .agg(pl.len().alias("n"), pl.col("series_id").first(), pl.col("ts").first())
        .sort("_file")
        .collect()
    )
    if clash.height:
        files = ", ".join(f"{Path(f).parent.name}/{Path(f).name} ({n:,})"
                          for f, n in clash.select("_file", "n").iter_rows())  # fmt: skip
        first = clash.row(0, named=True)
        raise DuplicateRowsError(
            f"{clash['n'].sum():,} points (e.g. series {first['series_id']!r} at {first['ts']}) "
            f"are already in {root} under another name: {files}; re-ingest that data under the "
            "same name (--part NAME replaces that file) or delete the files it replaces"
        )


def read_csv(path: str | Path, freq: str = "h", **kwargs: object) -> pl.DataFrame:
    """Read a long-format CSV (``series_id,ts,value``) and validate it."""
    frame = pl.read_csv(path, try_parse_dates=True, **kwargs)  # type: ignore[arg-type]
    return validate_long_frame(frame, freq)


def read_long_file(path: str | Path, freq: str = "h") -> pl.DataFrame:
    """Read and validate a long-format ``.csv`` or ``.parquet`` file."""
    return validate_long_frame(read_long_raw(path), freq)


def read_long_raw(path: str | Path) -> pl.DataFrame:
    """A long-format ``.csv`` or ``.parquet`` file as read, not yet validated (``tsmeta
    ingest`` validates it and puts it on the grid with ``schema.on_grid``)."""
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(
            f"{src} does not exist: give a CSV or Parquet file of series_id, ts, value"
        )
    suffix = src.suffix.lower()
    if suffix == ".csv":
        return pl.read_csv(src, try_parse_dates=True)
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(src)
    raise ValueError(f"{src.name}: unknown file type {src.suffix!r}; give a .csv or .parquet file")


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
