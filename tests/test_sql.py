"""Every file in sql/ runs against SQLite and PostgreSQL (``*.<dialect>.sql`` on its own)."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from tsmeta.store.ddl import postgresql_ddl
from tsmeta.store.schema import create_engine, create_schema
from tsmeta.store.writes import (
    finish_run,
    record_feedback,
    replace_night,
    start_run,
    upsert_series,
    write_profile,
)

SQL = Path(__file__).resolve().parent.parent / "sql"
DIALECTS = ("sqlite", "postgresql")


def statements(path: Path) -> list[str]:
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.strip().startswith("--")
    )
    return [s.strip() for s in text.split(";") if s.strip()]


def applies_to(path: Path, dialect: str) -> bool:
    tag = path.name.removesuffix(".sql").rsplit(".", 1)
    return len(tag) == 1 or tag[1] not in DIALECTS or tag[1] == dialect


def test_checked_in_ddl_matches_the_metadata():
    assert (SQL / "schema.postgresql.sql").read_text() == postgresql_ddl(), (
        "sql/schema.postgresql.sql is stale: regenerate it (command in its header)"
    )


def test_every_sql_file_has_a_dialect_or_is_portable():
    for path in SQL.rglob("*.sql"):
        tag = path.name.removesuffix(".sql").split(".")
        assert len(tag) == 1 or tag[-1] in DIALECTS, f"{path.name}: unknown dialect tag"


@pytest.fixture
def populated(db_url):
    engine = create_engine(db_url)
    dialect = engine.dialect.name
    if dialect == "postgresql":
        with engine.begin() as conn:  # the checked-in DDL itself creates the schema
            for stmt in statements(SQL / "schema.postgresql.sql"):
                conn.execute(sa.text(stmt))
    else:
        create_schema(engine)
    night = datetime(2026, 11, 14, tzinfo=UTC)
    rows = pl.DataFrame(
        {
            "series_id": ["a", "a", "b", "c"],
            "ts": [night + timedelta(hours=h) for h in (1, 2, 5, 7)],
            "value": [9.0, 8.0, 1.0, 5.0], "forecast": [5.0] * 4, "lower": [4.0] * 4, "upper": [6.0] * 4,
            "residual": [4.0, 3.0, -4.0, 0.0], "score": [0.9999, 0.999, 0.9995, 0.9991],
            "direction": ["up", "up", "down", "up"], "cluster_id": ["p24", "p24", "p168", "p24"],
            "model_version": [1] * 4,
        }
    )  # fmt: skip
    older = rows.head(1).with_columns(
        pl.col("ts") - timedelta(days=1), pl.lit(0.99999).alias("score")
    )
    ancient = rows.slice(2, 1).with_columns(pl.col("ts") - timedelta(days=10))
    # a shared event of p24 (as tsmeta.events.shared_events writes one) holding a's two points
    event_id = "p24/2026-11-14T01:00Z/up"
    shared = pl.DataFrame({"event_id": [event_id], "cluster_id": ["p24"], "kind": ["shared"],
                           "start_ts": [night + timedelta(hours=1)], "end_ts": [night + timedelta(hours=3)],
                           "direction": ["up"], "n_series": [1], "peak_share": [0.5], "n_points": [2]})  # fmt: skip
    rows = rows.with_columns(
        pl.when(pl.col("series_id") == "a").then(pl.lit(event_id)).alias("event_id")
    )
    for frame, day, events in (
        (ancient, night - timedelta(days=10), None),
        (older, night - timedelta(days=1), None),
        (rows, night, shared),
    ):
        replace_night(
            engine,
            frame,
            day,
            day + timedelta(days=1),
            "r",
            cluster_ids=["p24", "p168"],
            shared=events,
        )
    write_profile(engine, pl.DataFrame({"series_id": ["a", "b", "c"], "period": [24, 168, 24],
                                        "strength": [0.9, 0.8, 0.7], "cluster_id": ["p24", "p168", "p24"]}), "r")  # fmt: skip
    upsert_series(
        engine,
        pl.DataFrame({"series_id": ["a", "b"], "attributes": [{"team": "web"}, {"team": "db"}]}),
    )
    for ts, label in (
        (night + timedelta(hours=1), "true_positive"),
        (night + timedelta(hours=2), "false_positive"),
    ):
        record_feedback(engine, "a", ts, label, author="ana")
    record_feedback(
        engine, "b", night + timedelta(hours=5), "true_positive", author="ana", note="disk full"
    )
    finish_run(engine, start_run(engine, "nightly", {"night": "2026-11-14"}), "completed",
               counts={"series": 3, "series_with_data": 3, "points_scored": 72, "flagged": 4})  # fmt: skip
    files = [SQL / "views.sql", SQL / f"views.{dialect}.sql"]
    with engine.begin() as conn:
        for path in files:
            for stmt in statements(path):
                conn.execute(sa.text(stmt))
    yield engine
    engine.dispose()


def run_query(engine, name: str) -> list:
    with engine.connect() as conn:
        return [
            tuple(r) for r in conn.execute(sa.text(statements(SQL / "queries" / name)[0])).all()
        ]


def test_views_files_cover_both_dialects():
    for dialect in DIALECTS:
        assert (SQL / f"views.{dialect}.sql").is_file()


def test_every_query_runs(populated):
    queries = sorted((SQL / "queries").glob("*.sql"))
    assert len(queries) >= 5
    for path in queries:
        if applies_to(path, populated.dialect.name):
            assert run_query(populated, path.name), f"{path.name} returned no rows"


def test_latest_night_view_and_top_query(populated):
    top = run_query(populated, "top_anomalies_latest_night.sql")
    assert [r[0] for r in top] == ["a", "b", "c", "a"]  # the older night's 0.99999 is excluded
    assert top[0][6] == pytest.approx(0.9999)


def test_daily_counts_come_from_the_rollup(populated):
    rows = run_query(populated, "daily_counts_last_30_nights.sql")
    by_key = {(str(r[0])[:10], r[1]): r[3] for r in rows}
    assert by_key[("2026-11-14", "p24")] == 3 and by_key[("2026-11-14", "p168")] == 1
    assert by_key[("2026-11-13", "p24")] == 1 and by_key[("2026-11-13", "p168")] == 0
    assert by_key[("2026-11-04", "p168")] == 1


def test_top_series_window_excludes_old_nights(populated):
    rows = run_query(populated, "top_series_last_7_nights.sql")
    counts = {r[0]: r[3] for r in rows}
    assert counts == {"a": 3, "b": 1, "c": 1}  # b's anomaly 10 days earlier is outside the window
    assert rows[0][:3] == ("a", 24, "p24")


def test_precision_by_cluster_from_feedback(populated):
    rows = {r[0]: r for r in run_query(populated, "precision_by_cluster.sql")}
    assert rows["p24"][1:4] == (2, 1, 1) and rows["p24"][4] == pytest.approx(0.5)
    assert rows["p168"][4] == pytest.approx(1.0)


def test_anomalies_with_series_attributes(populated):
    rows = run_query(populated, "series_anomalies_with_attributes.sql")
    assert len(rows) == 3 and {r[7] for r in rows} == {24}
    attrs = rows[0][8]
    assert (json.loads(attrs) if isinstance(attrs, str) else attrs) == {"team": "web"}


def test_nightly_health_shows_the_latest_run_and_its_counts(populated):
    import time

    from tsmeta.store.writes import finish_run, start_run

    (row,) = run_query(populated, "nightly_health.sql")
    assert row[1:3] == ("completed", "2026-11-14")
    assert [int(v) for v in row[5:9]] == [3, 3, 72, 4]
    time.sleep(0.01)  # a later start
    late = start_run(populated, "nightly", {"night": "2026-11-15"})
    finish_run(populated, late, "failed", error="NightDataMissing: no data for night 2026-11-15")
    (row,) = run_query(populated, "nightly_health.sql")
    assert row[1:3] == ("failed", "2026-11-15") and row[5] is None
    assert row[-1].startswith("NightDataMissing")


def test_shared_events_view_and_query(populated):
    """The night's shared event is in the view with its cluster, its members carry its id,
    and re-writing the night without it removes it (events are replaced with the night)."""
    rows = run_query(populated, "events_latest_night.sql")
    assert [(r[0], r[1], r[4], r[7]) for r in rows] == [("shared", "p24", "up", 2)]
    with populated.connect() as conn:
        members = conn.execute(sa.text(
            "SELECT series_id FROM anomalies_with_series WHERE event_id = :e ORDER BY ts"),
            {"e": rows[0][8]}).scalars().all()  # fmt: skip
    assert members == ["a", "a"]
    night = datetime(2026, 11, 14, tzinfo=UTC)
    empty = pl.DataFrame(schema={"series_id": pl.String, "ts": pl.Datetime("us", "UTC"),
                                 **dict.fromkeys(("value", "forecast", "lower", "upper", "residual", "score"), pl.Float64),
                                 "direction": pl.String, "cluster_id": pl.String, "model_version": pl.Int64})  # fmt: skip
    replace_night(populated, empty, night, night + timedelta(days=1), "r2",
                  cluster_ids=["p24", "p168"])  # fmt: skip
    assert run_query(populated, "events_latest_night.sql") == []
