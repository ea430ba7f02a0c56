from datetime import UTC, datetime

import pytest

from tsmeta.data.m4 import M4_HORIZON, default_m4_dir, load_m4_hourly
from tsmeta.data.panel import build_panel
from tsmeta.data.schema import validate_long_frame

needs_m4 = pytest.mark.skipif(
    not (default_m4_dir() / "Hourly-train.csv").is_file(),
    reason=f"M4 Hourly data not found at {default_m4_dir()} (set TSMETA_M4_DIR)",
)


@needs_m4
def test_load_m4_hourly():
    train, test = load_m4_hourly(end=datetime(2026, 1, 1))
    train, test = validate_long_frame(train), validate_long_frame(test)
    lengths = train.group_by("series_id").len()
    assert lengths.height == 414
    assert set(lengths["len"].unique().to_list()) == {700, 960}
    assert test.height == 414 * M4_HORIZON
    assert train["ts"].max() == datetime(2025, 12, 31, 23, tzinfo=UTC)
    assert test["ts"].min() == datetime(2026, 1, 1, tzinfo=UTC)
    # the first series' published values (Hourly-train.csv row H1 starts 605, 586, 586)
    h1 = train.filter(train["series_id"] == "H1").sort("ts")["value"].head(3).to_list()
    assert h1 == [605.0, 586.0, 586.0]
    panel = build_panel(train, "h")
    assert panel.n_series == 414 and panel.mask.sum() == train.height


def test_missing_folder_has_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="TSMETA_M4_DIR"):
        load_m4_hourly(tmp_path)
    with pytest.raises(ValueError, match="on the hour"):
        load_m4_hourly(end=datetime(2026, 1, 1, 0, 30))
