"""Anomaly store: write throughput and the analysts' queries at scale.

1. Writes: one night of ``--rows`` anomalies (default 1,000,000) into SQLite and
   PostgreSQL through ``replace_night`` (COPY on PostgreSQL, batched inserts on SQLite);
   then the same night again (the idempotent replace) and the row count after it.
2. Views: a PostgreSQL database filled with ``--view-rows`` anomalies (default 10,000,000,
   ``--nights`` nights), analysed, then every query in ``sql/queries/`` timed (best of 3)
   on the views of ``sql/views*.sql``.

PostgreSQL: a scratch database is created on the server at ``TSMETA_BENCH_POSTGRES_URL``
(default the local server) and dropped afterwards.

    python benchmarks/store.py --json store.json
    python benchmarks/store.py --rows 100000 --view-rows 500000     # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _scratch
import numpy as np
import polars as pl
import sqlalchemy as sa

from tsmeta.store.schema import create_engine, create_schema
from tsmeta.store.writes import replace_night, write_profile

ROOT = Path(__file__).resolve().parent.parent
SQL = ROOT / "sql"
CLUSTERS = ("p24", "p168", "aperiodic")
FIRST_NIGHT = datetime(2026, 1, 1, tzinfo=UTC)


def night_frame(night: datetime, n_rows: int, seed: int) -> pl.DataFrame:
    """n_rows anomalies of one night: n_rows/24 series x 24 hours."""
    rng = np.random.default_rng(seed)
    n_series = -(-n_rows // 24)
    idx = np.arange(n_rows)
    sid = idx // 24
    value = rng.normal(100, 20, n_rows)
    forecast = value - rng.normal(0, 30, n_rows)
    return pl.DataFrame(
        {
            "series_id": np.char.add("s", (sid + seed * n_series).astype(str)),
            "ts": np.datetime64(night.replace(tzinfo=None), "us") + (idx % 24) * np.timedelta64(1, "h"),
            "value": value, "forecast": forecast, "lower": forecast - 10, "upper": forecast + 10,
            "residual": value - forecast, "score": 1 - rng.uniform(0, 1e-3, n_rows),
            "direction": np.where(value > forecast, "up", "down"),
            "cluster_id": np.array(CLUSTERS)[sid % 3], "model_version": np.ones(n_rows, dtype=np.int64),
        }
    ).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))  # fmt: skip


def statements(path: Path) -> list[str]:
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.strip().startswith("--")
    )
    return [s.strip() for s in text.split(";") if s.strip()]


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("select count(*) from anomalies")).scalar()


def bench_writes(engine: sa.Engine, n_rows: int) -> dict:
    create_schema(engine)
    frame = night_frame(FIRST_NIGHT, n_rows, seed=0)
    end = FIRST_NIGHT + timedelta(days=1)
    t = time.perf_counter()
    replace_night(engine, frame, FIRST_NIGHT, end, "bench-1", list(CLUSTERS))
    first = time.perf_counter() - t
    t = time.perf_counter()
    replace_night(engine, frame, FIRST_NIGHT, end, "bench-2", list(CLUSTERS))
    again = time.perf_counter() - t
    return {"dialect": engine.dialect.name, "rows": n_rows, "write_s": round(first, 2),
            "rows_per_s": round(n_rows / first), "rewrite_s": round(again, 2),
            "rows_after_rewrite": count(engine)}  # fmt: skip


def bench_views(engine: sa.Engine, n_rows: int, nights: int) -> dict:
    create_schema(engine)
    per_night = n_rows // nights
    t = time.perf_counter()
    for i in range(nights):
        night = FIRST_NIGHT + timedelta(days=i)
        replace_night(engine, night_frame(night, per_night, seed=i % 50), night, night + timedelta(days=1),
                      f"fill-{i}", list(CLUSTERS))  # fmt: skip
        if (i + 1) % 10 == 0:
            print(f"  filled {i + 1}/{nights} nights", file=sys.stderr, flush=True)
    fill = time.perf_counter() - t
    # a profile for the joins (one row per series id used)
    ids = pl.concat(
        [
            night_frame(FIRST_NIGHT, per_night, seed=s).select("series_id", "cluster_id")
            for s in range(50)
        ]
    ).unique("series_id")
    write_profile(
        engine, ids.with_columns(pl.lit(24).alias("period"), pl.lit(0.9).alias("strength")), "bench"
    )
    # feedback on a sample of the latest night
    last = FIRST_NIGHT + timedelta(days=nights - 1)
    sample = night_frame(last, per_night, seed=(nights - 1) % 50).head(2000)
    with engine.begin() as conn:
        conn.execute(sa.text("insert into anomaly_feedback (series_id, ts, label, author, created_at) values "
                             "(:series_id, :ts, :label, 'bench', now())"),  # fmt: skip
                     [{"series_id": r["series_id"], "ts": r["ts"], "label": "true_positive" if i % 3 else "false_positive"}
                      for i, r in enumerate(sample.iter_rows(named=True))])  # fmt: skip
        for path in (SQL / "views.sql", SQL / f"views.{engine.dialect.name}.sql"):
            for stmt in statements(path):
                conn.execute(sa.text(stmt))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("analyze"))
    timings = {}
    with engine.connect() as conn:
        for path in sorted((SQL / "queries").glob("*.sql")):
            stmt = sa.text(statements(path)[0])
            best, rows = float("inf"), 0
            for _ in range(3):
                t = time.perf_counter()
                rows = len(conn.execute(stmt).all())
                best = min(best, time.perf_counter() - t)
            timings[path.name] = {"seconds": round(best, 4), "rows": rows}
    return {"dialect": engine.dialect.name, "anomaly_rows": count(engine), "nights": nights,
            "fill_s": round(fill, 1), "queries": timings}  # fmt: skip


def scratch_postgres() -> tuple[str, Callable[[], None]]:
    return _scratch.scratch_postgres(
        os.environ.get(
            "TSMETA_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        )
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000, help="anomaly rows written in one night")
    ap.add_argument(
        "--view-rows", type=int, default=10_000_000, help="rows behind the view timings"
    )
    ap.add_argument("--nights", type=int, default=100)
    ap.add_argument("--skip-views", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    results: dict = {"writes": [], "views": None}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = create_engine(f"sqlite:///{tmp}/bench.db")
        results["writes"].append(bench_writes(sqlite, args.rows))
        sqlite.dispose()
    url, drop = scratch_postgres()
    try:
        pg = create_engine(url)
        results["writes"].append(bench_writes(pg, args.rows))
        pg.dispose()
        if not args.skip_views:
            drop()
            url, drop = scratch_postgres()
            pg = create_engine(url)
            results["views"] = bench_views(pg, args.view_rows, args.nights)
            pg.dispose()
    finally:
        drop()

    print(
        f"{'database':<12}{'rows':>12}{'write s':>10}{'rows/s':>12}{'rewrite s':>11}{'rows after':>12}"
    )
    for w in results["writes"]:
        print(f"{w['dialect']:<12}{w['rows']:>12,}{w['write_s']:>10}{w['rows_per_s']:>12,}"
              f"{w['rewrite_s']:>11}{w['rows_after_rewrite']:>12,}")  # fmt: skip
    if results["views"]:
        v = results["views"]
        print(f"\nqueries on {v['dialect']} with {v['anomaly_rows']:,} anomaly rows over {v['nights']} nights "
              f"(filled in {v['fill_s']}s), best of 3:")  # fmt: skip
        for name, q in v["queries"].items():
            print(f"  {name:<42}{q['seconds'] * 1000:>9.1f} ms {q['rows']:>6} rows")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
