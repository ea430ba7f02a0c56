"""The profile step end to end at scale: read, detect periods, cluster, write.

Generates (untimed, once) N hourly series as the partitioned Parquet dataset, then times
``tsmeta.jobs.profile_series`` over a window of ``--days`` days (672 points at 28) in a
fresh process per database, twice: the first profiling (clusters fitted) and the next
one (every series assigned to the stored centroids, the nightly case). Each run reports
its wall time, series/s, peak resident memory, per-stage seconds and the clusters.

    python benchmarks/profile_scale.py --series 2000000 \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1/postgres --json profile_scale.json

The PostgreSQL runs use a scratch database created (and dropped) on that server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from _scratch import scratch_postgres

START = date(2026, 10, 1)


def child(args: argparse.Namespace) -> int:
    """One profiling in this process; prints its figures as JSON on the last line."""
    import logging
    import resource

    logging.basicConfig(level=logging.WARNING)
    from tsmeta import jobs
    from tsmeta.config import load_settings

    settings = load_settings(
        data_dir=str(args.work), dataset_path=str(args.work / "dataset"),
        database_url=args.child, history_days=args.days,
    )  # fmt: skip
    t = time.perf_counter()
    out = jobs.profile_series(settings, START + timedelta(days=args.days), "bench")
    wall = time.perf_counter() - t
    print(json.dumps({
        "seconds": round(wall, 1), "series": out["series"],
        "series_per_s": round(out["series"] / wall), "clusters": len(out["clusters"]),
        "largest_cluster": max(out["clusters"].values()), "oversized": len(out["oversized"]),
        "fitted_periods": out["fitted_periods"], "timings": out["timings"],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=28, help="profiling window (28 = 672 points)")
    ap.add_argument("--work", type=Path, default=Path(".tsmeta/bench-profile"))
    ap.add_argument("--pg-url", default=None, help="PostgreSQL server for the second database")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    manifest = args.work / "dataset" / "_meta" / "manifest.json"
    meta = json.loads(manifest.read_text()) if manifest.exists() else {}
    if meta.get("n_series") != args.series or meta.get("days", 0) < args.days:
        from tsmeta.data.synthetic import write_synthetic_dataset

        print(f"generating {args.series:,} series x {args.days} days (not timed) ...", flush=True)
        write_synthetic_dataset(args.work / "dataset", args.series, "h", args.days, START, seed=0)

    databases = {"sqlite": None}
    if args.pg_url:
        databases["postgresql"] = None
    rows = []
    for name in databases:
        if name == "sqlite":
            db = args.work / "profile.db"
            db.unlink(missing_ok=True)
            url, drop = f"sqlite:///{db.resolve()}", None
        else:
            url, drop = scratch_postgres(args.pg_url)
        try:
            for run in ("first (fit clusters)", "next (assign to stored)"):
                cmd = [sys.executable, __file__, "--child", url, "--work", str(args.work),
                       "--days", str(args.days)]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stderr, file=sys.stderr)
                    return proc.returncode
                rows.append({"database": name, "run": run,
                             **json.loads(proc.stdout.strip().splitlines()[-1])})  # fmt: skip
        finally:
            if drop:
                drop()

    print(f"\nprofile: {args.series:,} hourly series x {24 * args.days} points, 2 threads\n")
    head = ("database", "run", "seconds", "series/s", "peak GiB", "clusters", "largest",
            "read wait", "detect+shape", "cluster", "write")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        t = r["timings"]
        cells = (r["database"], r["run"], r["seconds"], f"{r['series_per_s']:,}",
                 r["peak_rss_gib"], r["clusters"], f"{r['largest_cluster']:,}", t["read"],
                 t["detect"], t.get("cluster", 0.0), t["write"])  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"series": args.series, "days": args.days,
                                         "runs": rows}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
