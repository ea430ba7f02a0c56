"""The Panel: a dense block of many series on one regular time grid.

Built from a validated long frame by a scatter (row index x step index), not a pivot:
``values[row, step] = value``. Memory is ``n_series * n_steps * 5`` bytes (float32 values
and a bool mask), so callers bound it by building panels for chunks of series.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

import numpy as np
import polars as pl

from tsmeta.frequency import freq_timedelta, normalise_freq

__all__ = [
    "Panel",
    "build_panel",
    "scatter_panel",
    "freq_timedelta",
    "steps_since_epoch",
]

_EPOCH = datetime(1970, 1, 1)
_BLOCK = 1 << 20  # rows per block in scatter_panel


def steps_since_epoch(ts: datetime, freq: str) -> int:
    """Index of ``ts`` on the global grid of ``freq`` (used for phase features)."""
    naive = ts.replace(tzinfo=None)
    return int((naive - _EPOCH) // freq_timedelta(freq))


@dataclass(frozen=True)
class Panel:
    """``values`` float32 (n_series, n_steps), ``mask`` bool (observed), ``series_ids``.

    ``start`` is the (naive, UTC) timestamp of step 0; ``values`` is NaN where ``mask`` is
    False so that a forgotten mask shows up as NaN instead of as a silent zero.
    """

    values: np.ndarray
    mask: np.ndarray
    series_ids: np.ndarray
    start: datetime
    freq: str

    def __post_init__(self) -> None:
        if self.values.shape != self.mask.shape or self.values.ndim != 2:
            raise ValueError(
                f"values {self.values.shape} and mask {self.mask.shape} must be equal 2-D shapes"
            )
        if len(self.series_ids) != self.values.shape[0]:
            raise ValueError(
                f"{len(self.series_ids)} series_ids for {self.values.shape[0]} rows of values"
            )

    @property
    def n_series(self) -> int:
        return self.values.shape[0]

    @property
    def n_steps(self) -> int:
        return self.values.shape[1]

    @property
    def start_step(self) -> int:
        """Global step index of column 0 (phase of column j is start_step + j)."""
        return steps_since_epoch(self.start, self.freq)

    def timestamps(self) -> np.ndarray:
        step = np.timedelta64(freq_timedelta(self.freq) // timedelta(minutes=1), "m")
        return np.datetime64(self.start, "us") + np.arange(self.n_steps) * step

    def select(self, rows: np.ndarray) -> Panel:
        return Panel(
            self.values[rows], self.mask[rows], self.series_ids[rows], self.start, self.freq
        )

    def chunks(self, size: int) -> Iterator[Panel]:
        """Consecutive row blocks of at most ``size`` series (views, no copies)."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, received {size}")
        for first in range(0, self.n_series, size):
            yield self.select(slice(first, first + size))

    def window(self, first: int, stop: int) -> Panel:
        """Columns [first, stop) as a Panel with the matching start."""
        return Panel(
            self.values[:, first:stop],
            self.mask[:, first:stop],
            self.series_ids,
            self.start + first * freq_timedelta(self.freq),
            self.freq,
        )


def build_panel(
    frame: pl.DataFrame,
    freq: str,
    start: datetime | None = None,
    end: datetime | None = None,
    series_ids: np.ndarray | None = None,
) -> Panel:
    """Scatter a validated long frame into a Panel on ``[start, end)``.

    ``start``/``end`` default to the frame's min ts and max ts + one step; rows outside are
    dropped. ``series_ids`` fixes the row order (ids absent from the frame get an all-False
    mask); by default rows are the frame's ids in sorted order.
    """
    freq = normalise_freq(freq)
    step = freq_timedelta(freq)
    ts_col = frame.get_column("ts")
    if start is None:
        start = ts_col.min()
    if end is None:
        end = ts_col.max() + step
    start_n = start.replace(tzinfo=None)
    end_n = end.replace(tzinfo=None)
    n_steps = int((end_n - start_n) // step)
    if n_steps <= 0:
        raise ValueError(f"empty time range: start {start} is not before end {end}")

    if series_ids is None:
        series_ids = frame.get_column("series_id").unique().sort().to_numpy()
    ids = pl.Series("series_id", series_ids, dtype=frame.schema["series_id"])
    index = pl.DataFrame({"series_id": ids, "_row": np.arange(len(ids), dtype=np.int64)})

    unit_us = int(step / timedelta(microseconds=1))
    start_us = int((start_n - _EPOCH) / timedelta(microseconds=1))
    located = (
        frame.lazy()
        .join(index.lazy(), on="series_id", how="inner")
        .select(
            "_row",
            ((pl.col("ts").dt.epoch("us") - start_us) // unit_us).alias("_step"),
            "value",
        )
        .filter((pl.col("_step") >= 0) & (pl.col("_step") < n_steps))
        .collect()
    )
    values = np.full((len(ids), n_steps), np.nan, dtype=np.float32)
    mask = np.zeros((len(ids), n_steps), dtype=bool)
    rows = located.get_column("_row").to_numpy()
    steps = located.get_column("_step").to_numpy()
    vals = located.get_column("value").to_numpy()  # nulls arrive as NaN
    observed = ~np.isnan(vals)
    values[rows, steps] = vals
    mask[rows[observed], steps[observed]] = True
    return Panel(values, mask, ids.to_numpy(), start_n, freq)


def scatter_panel(frame: pl.DataFrame, freq: str, start: datetime, end: datetime) -> Panel:
    """Validate a raw long frame and scatter it into a Panel on ``[start, end)``, in one pass.

    The hot-path equivalent of ``build_panel(validate_long_frame(frame))`` for large
    chunks: series are located by their runs (a frame sorted by ``series_id``, as the
    dataset writers leave it, has one run per series and file), so the per-row work is
    integer arithmetic, not a join on string ids. The checks are the same: null keys,
    non-finite values, off-grid timestamps and duplicate points are found here, and the
    error itself (with its message and examples) comes from :func:`validate_long_frame`.
    Rows outside ``[start, end)`` are ignored; rows are the chunk's ids in sorted order.
    """
    from tsmeta.data.schema import COLUMNS, validate_long_frame

    freq = normalise_freq(freq)
    step = freq_timedelta(freq)
    start_n, end_n = start.replace(tzinfo=None), end.replace(tzinfo=None)
    n_steps = int((end_n - start_n) // step)
    if n_steps <= 0:
        raise ValueError(f"empty time range: start {start} is not before end {end}")

    def invalid() -> NoReturn:  # the full validation names the problem; it must raise
        validate_long_frame(frame, freq)
        raise AssertionError("scatter_panel found a problem that validate_long_frame did not")

    schema = frame.schema
    if (
        any(c not in schema for c in COLUMNS)
        or not (schema["series_id"] == pl.String or schema["series_id"].is_integer())
        or not isinstance(schema["ts"], pl.Datetime)
        or not schema["value"].is_float()
        or frame.get_column("series_id").null_count()
        or frame.get_column("ts").null_count()
    ):
        return build_panel(validate_long_frame(frame, freq), freq, start, end)
    if frame.height == 0:
        invalid()
    value = frame.get_column("value")
    if (value.is_nan() | value.is_infinite()).any():
        invalid()

    sid = frame.get_column("series_id")
    if sid.dtype.is_integer():
        sid = sid.cast(pl.Int64)
    runs = sid.rle().struct.unnest()  # columns len, value: one row per run of equal ids
    ids = runs.get_column("value").unique().sort()
    n = len(ids)
    index = pl.DataFrame({"value": ids, "_row": np.arange(n, dtype=np.int64)})
    run_rows = runs.join(index, on="value", how="left", maintain_order="left")
    itype = np.int32 if n * n_steps < 2**31 else np.int64
    base = np.repeat(  # flat index of each row's series at step 0
        (run_rows.get_column("_row").to_numpy() * n_steps).astype(itype),
        run_rows.get_column("len").to_numpy(),
    )

    unit_us = int(step / timedelta(microseconds=1))
    origin = int((start_n - _EPOCH) / timedelta(microseconds=1))
    ts = frame.get_column("ts").dt.cast_time_unit("us").to_physical()  # UTC epoch, any zone
    taken = np.zeros(n * n_steps, dtype=bool)
    values = np.full(n * n_steps, np.nan, dtype=np.float32)
    placed = 0
    for lo in range(0, frame.height, _BLOCK):  # blocks keep the temporaries in cache
        rel = ts.slice(lo, _BLOCK).to_numpy() - origin
        steps = rel // unit_us
        if (steps * unit_us != rel).any():
            invalid()  # a timestamp off the grid
        inside = (steps >= 0) & (steps < n_steps)
        flat = base[lo : lo + len(steps)] + steps.astype(itype)
        vals = value.slice(lo, _BLOCK).to_numpy()  # nulls arrive as NaN
        if not inside.all():
            flat, vals = flat[inside], vals[inside]
        taken[flat] = True
        values[flat] = vals
        placed += len(flat)
    if np.count_nonzero(taken) != placed:
        invalid()  # two rows for one (series, step)
    del taken
    values = values.reshape(n, n_steps)
    return Panel(values, ~np.isnan(values), ids.to_numpy(), start_n, freq)
