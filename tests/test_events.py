"""Episodes within a series and shared events across a cluster (``tsmeta.events``)."""

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from tsmeta.events import episodes, shared_events

H = timedelta(hours=1)
T0 = datetime(2026, 12, 24, tzinfo=UTC)


def _rows(points: list[tuple[str, int, str, float]], cluster: str = "p24") -> pl.DataFrame:
    """Anomaly rows of (series, hour, direction, score)."""
    return pl.DataFrame(
        {
            "series_id": [p[0] for p in points],
            "ts": [T0 + p[1] * H for p in points],
            "value": [float(p[1]) for p in points],
            "forecast": [0.0] * len(points),
            "score": [p[3] for p in points],
            "surprise": [10 * p[3] for p in points],
            "direction": [p[2] for p in points],
            "severity": ["minor"] * len(points),
            "cluster_id": [cluster] * len(points),
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def test_consecutive_points_one_way_are_one_episode_with_their_peak():
    rows = _rows([("a", 3, "up", 0.5), ("a", 4, "up", 0.9), ("a", 5, "up", 0.7),  # one episode
                  ("a", 6, "down", 0.6),  # the other way: its own
                  ("a", 9, "up", 0.8),  # after a gap: its own
                  ("b", 4, "up", 0.95)])  # fmt: skip
    ep = episodes(rows.sample(fraction=1.0, shuffle=True, seed=1), H)
    assert ep.height == 4
    first = ep.filter((pl.col("series_id") == "a") & (pl.col("start") == T0 + 3 * H)).row(
        0, named=True
    )
    assert first["end"] == T0 + 6 * H and first["points"] == 3
    assert first["peak_ts"] == T0 + 4 * H and first["value"] == 4.0 and first["score"] == 0.9
    assert ep.get_column("series_id").to_list()[0] == "b"  # highest peak first
    assert ep.get_column("score").is_sorted(descending=True)


def test_a_large_share_flagged_the_same_way_at_once_is_one_event():
    """40 of 100 series down for hours 10-12 in one cluster: one event of three hours whose
    members are those 120 points; two series flagged at 10 the other way and one series
    flagged in another cluster stay their own; the ids are the same when re-computed."""
    drop = [(f"s{i}", h, "down", 0.99) for i in range(40) for h in (10, 11, 12)]
    rows = pl.concat([_rows(drop + [("x", 10, "up", 0.999), ("y", 10, "up", 0.999)]),
                      _rows([("z", 11, "down", 0.99)], cluster="p168")])  # fmt: skip
    events, tagged = shared_events(rows, {"p24": 100, "p168": 50}, H, 0.05, 5)
    assert events.height == 1
    e = events.row(0, named=True)
    assert (e["cluster_id"], e["direction"], e["kind"]) == ("p24", "down", "shared")
    assert (e["start_ts"], e["end_ts"]) == (T0 + 10 * H, T0 + 13 * H)
    assert (e["n_series"], e["n_points"], e["peak_share"]) == (40, 120, pytest.approx(0.4))
    assert tagged.height == rows.height
    assert tagged.filter(pl.col("event_id").is_not_null()).height == 120
    assert tagged.filter(pl.col("series_id").is_in(["x", "y", "z"]))["event_id"].is_null().all()
    again, _ = shared_events(rows.reverse(), {"p24": 100, "p168": 50}, H, 0.05, 5)
    assert again.equals(events)


def test_small_clusters_need_min_series_and_the_calendar_names_holidays():
    drop = [(f"s{i}", 10, "down", 0.99) for i in range(4)]
    assert shared_events(_rows(drop), {"p24": 10}, H, 0.05, 5)[0].height == 0  # 4 < 5 series
    events, _ = shared_events(_rows(drop), {"p24": 10}, H, 0.05, 4, holidays=[date(2026, 12, 24)])
    assert events.get_column("kind").to_list() == ["holiday"]
    assert shared_events(_rows(drop), {"p24": 1000}, H, 0.05, 4)[0].height == 0  # 0.4% < 5%
    with pytest.raises(ValueError, match="min_share"):
        shared_events(_rows(drop), {"p24": 10}, H, 0.0, 4)


def test_nothing_flagged_gives_empty_frames():
    empty = _rows([("a", 1, "up", 0.5)]).head(0)
    events, tagged = shared_events(empty, {"p24": 10}, H, 0.05, 5)
    assert events.height == 0 and tagged.height == 0 and "event_id" in tagged.columns
    assert episodes(tagged, H).height == 0
