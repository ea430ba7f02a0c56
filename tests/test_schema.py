from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsmeta.data.schema import (
    ColumnTypeError,
    DataValidationError,
    DuplicateRowsError,
    EmptyInputError,
    MissingColumnError,
    NonFiniteValueError,
    NullKeyError,
    OffGridTimestampError,
    validate_long_frame,
)

T0 = datetime(2026, 11, 1)


def frame(n=3, **overrides):
    data = {
        "series_id": ["a"] * n,
        "ts": [T0 + timedelta(hours=i) for i in range(n)],
        "value": [float(i) for i in range(n)],
    }
    data.update(overrides)
    return pl.DataFrame(data)


def test_valid_frame_is_normalised():
    out = validate_long_frame(frame().with_columns(extra=pl.lit(1)))
    assert out.columns == ["series_id", "ts", "value"]
    assert out.schema["ts"] == pl.Datetime("us", "UTC")
    assert out.schema["value"] == pl.Float64


def test_integer_ids_and_values_accepted():
    out = validate_long_frame(frame(series_id=[1, 1, 1], value=[1, 2, 3]))
    assert out.schema["series_id"] == pl.Int64 and out.schema["value"] == pl.Float64


def test_other_time_zone_is_converted_to_utc():
    f = frame().with_columns(pl.col("ts").dt.replace_time_zone("Europe/Berlin"))
    out = validate_long_frame(f)
    assert out["ts"][0] == datetime(2026, 10, 31, 23, tzinfo=UTC)


def test_empty_input():
    with pytest.raises(EmptyInputError, match="no rows"):
        validate_long_frame(frame().head(0))


def test_missing_column_suggests_rename():
    f = frame().rename({"ts": "timestamp", "value": "y"})
    with pytest.raises(MissingColumnError) as err:
        validate_long_frame(f)
    msg = str(err.value)
    assert "['ts', 'value']" in msg and "'timestamp': 'ts'" in msg and "'y': 'value'" in msg


def test_missing_column_without_alias():
    with pytest.raises(MissingColumnError, match="provide them"):
        validate_long_frame(frame().drop("value"))


def test_string_timestamps_rejected_with_parse_hint():
    with pytest.raises(ColumnTypeError, match="str.to_datetime"):
        validate_long_frame(frame(ts=["2026-11-01 00:00"] * 3))


def test_string_values_rejected():
    with pytest.raises(ColumnTypeError, match="'value' has dtype String"):
        validate_long_frame(frame(value=["1", "2", "x"]))


def test_float_ids_rejected():
    with pytest.raises(ColumnTypeError, match="series_id"):
        validate_long_frame(frame(series_id=[1.5, 1.5, 1.5]))


def test_null_series_id_rejected():
    with pytest.raises(NullKeyError, match="'series_id' has 1 null"):
        validate_long_frame(frame(series_id=["a", None, "a"]))


def test_duplicates_rejected_with_examples():
    f = frame(ts=[T0, T0, T0 + timedelta(hours=1)])
    with pytest.raises(DuplicateRowsError, match="2 rows share") as err:
        validate_long_frame(f)
    assert "unique" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_rejected(bad):
    with pytest.raises(NonFiniteValueError, match="non-finite"):
        validate_long_frame(frame(value=[1.0, bad, 2.0]))


def test_nan_as_missing_turns_nan_into_null():
    out = validate_long_frame(frame(value=[1.0, float("nan"), 2.0]), nan_as_missing=True)
    assert out["value"].null_count() == 1


def test_null_value_is_a_missing_point_not_an_error():
    out = validate_long_frame(frame(value=[1.0, None, 2.0]))
    assert out["value"].null_count() == 1


def test_off_grid_timestamps_rejected():
    f = frame(ts=[T0, T0 + timedelta(minutes=30), T0 + timedelta(hours=2)])
    with pytest.raises(OffGridTimestampError, match="not on the 1h grid"):
        validate_long_frame(f)


def test_daily_grid():
    with pytest.raises(OffGridTimestampError, match="1d grid"):
        validate_long_frame(frame(), "d")  # hourly stamps on a daily dataset


def test_unknown_frequency():
    with pytest.raises(ValueError, match="does not divide a day evenly"):
        validate_long_frame(frame(), "7min")


def test_minute_grid():
    validate_long_frame(frame(), "15min")  # hourly stamps lie on a 15-minute grid
    f = frame().with_columns(pl.col("ts") + pl.duration(minutes=5))
    validate_long_frame(f, "5min")
    with pytest.raises(OffGridTimestampError, match="15m grid"):
        validate_long_frame(f, "15min")


def test_all_errors_are_value_errors():
    assert issubclass(DataValidationError, ValueError)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5), st.integers(0, 200), st.one_of(st.none(), st.floats(-1e9, 1e9))
        ),
        min_size=1,
        max_size=60,
        unique_by=lambda r: (r[0], r[1]),
    )
)
def test_property_valid_rows_pass_unchanged(rows):
    f = pl.DataFrame(
        {
            "series_id": [f"s{r[0]}" for r in rows],
            "ts": [T0 + timedelta(hours=r[1]) for r in rows],
            "value": [r[2] for r in rows],
        },
        schema={"series_id": pl.String, "ts": pl.Datetime("us"), "value": pl.Float64},
    )
    out = validate_long_frame(f)
    assert out.height == f.height
    assert out["value"].to_list() == f["value"].to_list()


def _irregular():
    return pl.DataFrame(
        {
            "series_id": ["a", "a", "a", "a", "b", "b"],
            "ts": [datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 4, 59),
                   datetime(2026, 1, 1, 0, 7), datetime(2026, 1, 1, 0, 20),
                   datetime(2026, 1, 1, 0, 0), datetime(2026, 1, 1, 0, 0)],
            "value": [1.0, 3.0, 5.0, None, 2.0, 4.0],
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    "rule,values", [("mean", [2.0, 5.0, None, 3.0]), ("last", [3.0, 5.0, None, 4.0]),
                    ("sum", [4.0, 5.0, None, 6.0]), ("max", [3.0, 5.0, None, 4.0])],
)  # fmt: skip
def test_on_grid_combines_by_the_rule_and_counts_everything(rule, values):
    from tsmeta.data.schema import on_grid

    out, report = on_grid(_irregular(), "5min", rule)
    assert out["value"].to_list() == values
    assert out["ts"].dt.minute().to_list() == [0, 5, 20, 0]
    assert report == {"freq": "5min", "aggregate": rule, "rows": 6, "points": 4, "moved": 2,
                      "combined": 2, "empty_steps": 2}  # fmt: skip
    validate_long_frame(out, "5min")  # on the grid, one row per step


def test_on_grid_keeps_the_duplicate_error_unless_a_rule_is_asked_for():
    from tsmeta.data.schema import on_grid

    with pytest.raises(DuplicateRowsError, match="--aggregate"):
        on_grid(_irregular(), "5min")
    out, report = on_grid(_irregular().slice(0, 4), "5min")  # off-grid alone: mean
    assert out["value"].to_list() == [2.0, 5.0, None] and report["aggregate"] == "mean"
    with pytest.raises(ValueError, match="aggregate must be one of"):
        on_grid(_irregular(), "5min", "median")
