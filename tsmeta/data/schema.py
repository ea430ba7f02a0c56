"""The long format (``series_id, ts, value``) and its validation.

Every rejection is a subclass of :class:`DataValidationError` whose message names the
column, says what was expected, shows what was received and suggests the fix. Missing
observations are allowed: either absent rows or null ``value`` (both become mask=False in
a Panel); they are never imputed.
"""

from __future__ import annotations

import polars as pl

from tsmeta.frequency import freq_timedelta, normalise_freq, polars_every

__all__ = [
    "COLUMNS",
    "DataValidationError",
    "EmptyInputError",
    "MissingColumnError",
    "ColumnTypeError",
    "NullKeyError",
    "DuplicateRowsError",
    "NonFiniteValueError",
    "OffGridTimestampError",
    "validate_long_frame",
    "on_grid",
    "AGGREGATES",
]

COLUMNS = ("series_id", "ts", "value")

# Common spellings of our columns in other tools, for "did you mean" hints.
_ALIASES = {
    "series_id": ("unique_id", "id", "series", "item_id", "metric", "key"),
    "ts": ("ds", "timestamp", "time", "date", "datetime"),
    "value": ("y", "val", "target", "values"),
}


class DataValidationError(ValueError):
    """Input data does not follow the long format; the message says how to fix it."""


class EmptyInputError(DataValidationError):
    pass


class MissingColumnError(DataValidationError):
    pass


class ColumnTypeError(DataValidationError):
    pass


class NullKeyError(DataValidationError):
    pass


class DuplicateRowsError(DataValidationError):
    pass


class NonFiniteValueError(DataValidationError):
    pass


class OffGridTimestampError(DataValidationError):
    pass


def _examples(df: pl.DataFrame, n: int = 3) -> str:
    return ", ".join(str(r) for r in df.head(n).iter_rows())


def _check_columns(columns: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in columns]
    if not missing:
        return
    hints = []
    lower = {c.lower(): c for c in columns}
    for col in missing:
        for alias in (col, *_ALIASES[col]):
            if alias in lower and lower[alias] not in COLUMNS:
                hints.append(f"{lower[alias]!r} -> {col!r}")
                break
    fix = (
        f"rename with df.rename({{{', '.join(h.replace(' -> ', ': ') for h in hints)}}})"
        if hints
        else "provide them (the long format is one row per series and timestamp)"
    )
    raise MissingColumnError(
        f"missing column(s) {missing}: expected columns {list(COLUMNS)}, received {columns}; {fix}"
    )


def validate_long_frame(
    df: pl.DataFrame | pl.LazyFrame,
    freq: str = "h",
    *,
    nan_as_missing: bool = False,
    check_grid: bool = True,
) -> pl.DataFrame:
    """Validate and normalise a long frame; return it with canonical dtypes.

    Canonical: ``series_id`` String or Int64, ``ts`` Datetime("us", "UTC") (naive
    timestamps are read as UTC; other zones are converted), ``value`` Float64 (null means
    missing). Extra columns are dropped. Raises a :class:`DataValidationError` subclass.
    """
    freq = normalise_freq(freq)
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    if not isinstance(df, pl.DataFrame):
        raise TypeError(
            f"expected a polars DataFrame or LazyFrame, received {type(df).__name__}; "
            "convert pandas input with polars.from_pandas(df)"
        )
    _check_columns(df.columns)
    if df.height == 0:
        raise EmptyInputError(
            "the input has no rows: expected at least one (series_id, ts, value) row; "
            "check the path or the date range that was read"
        )
    df = df.select(COLUMNS)
    schema = df.schema

    sid = schema["series_id"]
    if sid in (pl.String, pl.Categorical) or isinstance(sid, pl.Enum):
        df = df.with_columns(pl.col("series_id").cast(pl.String))
    elif sid.is_integer():
        df = df.with_columns(pl.col("series_id").cast(pl.Int64))
    else:
        raise ColumnTypeError(
            f"column 'series_id' has dtype {sid}: expected a string or integer id; "
            "cast it, e.g. pl.col('series_id').cast(pl.String)"
        )

    ts = schema["ts"]
    if not isinstance(ts, pl.Datetime):
        fix = (
            "parse it with pl.col('ts').str.to_datetime(time_zone='UTC')"
            if ts == pl.String
            else "convert it to a datetime column"
        )
        raise ColumnTypeError(f"column 'ts' has dtype {ts}: expected a datetime (UTC); {fix}")
    if ts.time_zone is None:
        df = df.with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    elif ts.time_zone != "UTC":
        df = df.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))
    df = df.with_columns(pl.col("ts").dt.cast_time_unit("us"))

    val = schema["value"]
    if not (val.is_float() or val.is_integer() or val == pl.Decimal):
        raise ColumnTypeError(
            f"column 'value' has dtype {val}: expected a number (float); "
            "cast it with pl.col('value').cast(pl.Float64, strict=True) after cleaning"
        )
    df = df.with_columns(pl.col("value").cast(pl.Float64))

    for col in ("series_id", "ts"):
        n_null = df.get_column(col).null_count()
        if n_null:
            raise NullKeyError(
                f"column {col!r} has {n_null} null value(s): every row needs a series id "
                "and a timestamp; drop those rows (missing observations are expressed by "
                "absent rows or a null 'value')"
            )

    bad = df.filter(pl.col("value").is_not_null() & ~pl.col("value").is_finite())
    if bad.height:
        if nan_as_missing:
            df = df.with_columns(
                pl.when(pl.col("value").is_finite()).then(pl.col("value")).otherwise(None)
            )
        else:
            raise NonFiniteValueError(
                f"column 'value' has {bad.height} non-finite value(s) (NaN or inf), e.g. "
                f"{_examples(bad)}; use null for a missing observation (an empty CSV field), "
                "drop the rows, or in Python pass nan_as_missing=True"
            )

    if not check_grid:
        return df
    _check_duplicates(df)
    every = polars_every(freq)
    off = df.filter(pl.col("ts").dt.truncate(every) != pl.col("ts"))
    if off.height:
        raise OffGridTimestampError(
            f"{off.height} timestamp(s) are not on the {every} grid for freq={freq!r}, e.g. "
            f"{_examples(off)}; if the data has another step, set it (--freq or TSMETA_FREQ); "
            "if its timestamps are irregular, put them on the grid with `tsmeta ingest` "
            "(--aggregate mean|last|sum|max; tsmeta.data.schema.on_grid in Python)"
        )
    return df


def _check_duplicates(df: pl.DataFrame) -> None:
    dup = df.filter(pl.struct("series_id", "ts").is_duplicated())
    if dup.height:
        raise DuplicateRowsError(
            f"{dup.height} rows share a (series_id, ts) pair, e.g. "
            f"{_examples(dup.sort('series_id', 'ts'))}; keep one row per series and "
            "timestamp, e.g. df.unique(['series_id', 'ts'], keep='last'), or combine them "
            "with `tsmeta ingest --aggregate mean|last|sum|max`"
        )


AGGREGATES = ("mean", "last", "sum", "max")


def on_grid(
    df: pl.DataFrame | pl.LazyFrame, freq: str = "h", aggregate: str | None = None
) -> tuple[pl.DataFrame, dict]:
    """Validate a long frame and put its points on the ``freq`` grid; (frame, report).

    Each point goes to the step that contains it (``ts`` truncated to the step, as pandas'
    ``resample`` and polars' ``group_by_dynamic`` label bins); the points of one series in
    one step are combined by ``aggregate`` (``mean``, the default; ``last``: the latest
    timestamp; ``sum``; ``max``), null values left out (a step of nulls stays null). Rows
    with the same series and timestamp are an error, as in ``validate_long_frame``, unless
    ``aggregate`` is given. The report counts the points ``moved`` onto the grid, the rows
    ``combined`` into another, and the ``empty_steps`` between each series' first and last
    point: nothing is dropped without being counted.
    """
    if aggregate is not None and aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, received {aggregate!r}")
    freq = normalise_freq(freq)
    frame = validate_long_frame(df, freq, check_grid=False)
    if aggregate is None:
        _check_duplicates(frame)
    rule = aggregate or "mean"
    every = polars_every(freq)
    frame = frame.with_columns(pl.col("ts").dt.truncate(every).alias("_slot"))
    moved = frame.filter(pl.col("_slot") != pl.col("ts")).height
    combine = {
        "mean": pl.col("value").mean(),
        "last": pl.col("value").last(),  # of the frame sorted by time, ties in input order
        "sum": pl.when(pl.col("value").count() > 0).then(pl.col("value").sum()),
        "max": pl.col("value").max(),
    }[rule]
    out = (
        frame.sort("series_id", "ts", maintain_order=True)
        .group_by("series_id", "_slot", maintain_order=True)
        .agg(combine.alias("value"))
        .rename({"_slot": "ts"})
        .sort("series_id", "ts")
    )
    step_us = int(freq_timedelta(freq).total_seconds() * 1e6)
    span = out.group_by("series_id").agg(
        ((pl.col("ts").max() - pl.col("ts").min()).dt.total_microseconds() // step_us + 1).alias(
            "steps"
        ),
        pl.len().alias("points"),
    )
    report = {
        "freq": freq,
        "aggregate": rule,
        "rows": frame.height,
        "points": out.height,
        "moved": moved,
        "combined": frame.height - out.height,
        "empty_steps": int((span["steps"] - span["points"]).sum()),
    }
    return out.select(COLUMNS), report
