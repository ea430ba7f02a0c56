"""Loader for the real M4 Hourly data (414 series; Makridakis et al., 2018).

The files are wide CSVs (``V1`` = id, then values oldest first, rows padded with empty
cells) without timestamps. We put every series on an hourly grid whose training part ends
at ``end`` (exclusive), so all series share the same forecast window: the 48 test points
are the hours ``[end, end + 48h)``, like one nightly forecast over two days.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["M4_HORIZON", "default_m4_dir", "load_m4_hourly", "m4_panel", "m4_wide"]

M4_HORIZON = 48
_DEFAULT_END = datetime(2026, 1, 1)


def default_m4_dir() -> Path:
    """``TSMETA_M4_DIR``, else ``../shared/data/m4`` next to the repository."""
    env = os.environ.get("TSMETA_M4_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "m4"


def _files(path: Path | None) -> tuple[Path, Path]:
    root = Path(path) if path is not None else default_m4_dir()
    train, test = root / "Hourly-train.csv", root / "Hourly-test.csv"
    if not (train.is_file() and test.is_file()):
        raise FileNotFoundError(
            f"M4 Hourly files not found in {root} (expected Hourly-train.csv and Hourly-test.csv): "
            "set TSMETA_M4_DIR to the folder holding them"
        )
    return train, test


def m4_wide(path: Path | None = None) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(ids, train values per series (ragged, oldest first), test values (n, 48))."""
    train_file, test_file = _files(path)
    train = pl.read_csv(train_file, infer_schema_length=0)
    test = pl.read_csv(test_file, infer_schema_length=0)
    ids = train.get_column("V1").to_numpy()
    if not np.array_equal(ids, test.get_column("V1").to_numpy()):
        raise ValueError("M4 train and test files list different series ids, or in another order")
    values = train.drop("V1").select(pl.all().cast(pl.Float64)).to_numpy()  # NaN padding
    lengths = (~np.isnan(values)).sum(axis=1)
    series = [
        values[i, : lengths[i]] for i in range(len(ids))
    ]  # 414 rows: a loader, not a hot path
    test_values = test.drop("V1").select(pl.all().cast(pl.Float64)).to_numpy()
    if test_values.shape[1] != M4_HORIZON or np.isnan(test_values).any():
        raise ValueError(f"M4 Hourly test file must hold {M4_HORIZON} values per series")
    return ids, series, test_values


def load_m4_hourly(
    path: Path | None = None, end: datetime = _DEFAULT_END
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, test) long frames ``series_id, ts, value`` on an hourly UTC grid.

    Training points end at ``end`` (exclusive) for every series; test points cover
    ``[end, end + 48h)``.
    """
    if end.minute or end.second or end.microsecond:
        raise ValueError(f"end {end} must be on the hour: M4 Hourly sits on an hourly grid")
    ids, series, test_values = m4_wide(path)
    lengths = np.array([len(s) for s in series])
    hour = np.timedelta64(1, "h")
    end64 = np.datetime64(end, "us")
    offsets = np.concatenate([np.arange(-n, 0) for n in lengths])
    train = pl.DataFrame(
        {
            "series_id": np.repeat(ids, lengths),
            "ts": end64 + offsets * hour,
            "value": np.concatenate(series),
        }
    )
    test = pl.DataFrame(
        {
            "series_id": np.repeat(ids, M4_HORIZON),
            "ts": end64 + np.tile(np.arange(M4_HORIZON), len(ids)) * hour,
            "value": test_values.reshape(-1),
        }
    )
    utc = pl.col("ts").dt.replace_time_zone("UTC")
    return train.with_columns(utc), test.with_columns(utc)


def m4_panel(path: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every M4 Hourly series right-aligned on one grid, test points appended.

    Returns (ids, values (n, L + 48) float32 with NaN before a series starts, mask, L): the
    training parts end at column L (the forecast origin of every series), the 48 test points
    fill columns [L, L + 48). Nothing in columns >= L may be used to forecast.
    """
    ids, series, test = m4_wide(path)
    width = max(len(s) for s in series)
    values = np.full((len(ids), width + M4_HORIZON), np.nan, dtype=np.float32)
    for i, s in enumerate(series):  # 414 rows: a loader
        values[i, width - len(s) : width] = s
    values[:, width:] = test
    return ids, values, ~np.isnan(values), width
