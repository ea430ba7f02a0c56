"""Two million series a night on one machine: the nightly path end to end, and the peers.

For each frequency (hourly: period 24, K = 24, one night = 24 points; daily: period 7,
K = 28, one night = 1 point; below an hour, e.g. ``--freqs 5min``: period and K one day of
steps, one night = 288 points at 5 minutes, a 23-day dataset: two weeks to profile and
the three weeks the week input's median reads):

1. generate N series with labelled anomalies as the partitioned Parquet dataset (not
   timed; reused when it exists);
2. ``profile`` and ``train`` (one meta-model per cluster, Ray), each timed, in a fresh
   process against PostgreSQL;
3. the night before the last scored once (untimed, nothing written): it saves every
   series' residual history, which the timed night reads as the nightly job would;
   then the ``nightly`` path for the last date, in a fresh process per database: read the
   window, adapt and score every series, write the flagged points (PostgreSQL, then
   SQLite with the same profile and models copied over, untimed);
4. on a random sample of the same series, in the same run: statsforecast's AutoETS and MSTL
   (season 24, or 7 for daily data) forecasting the night from the last 14 days (70 for
   daily), and seasonal naive + a MAD band; CPU seconds per series, extrapolated to N.

Reported per stage: wall seconds, series/s, CPU seconds per series, peak resident memory,
rows written, share of the nightly time per stage, and precision/recall of the flags
against the generator's labels for that night.

    python benchmarks/nightly_scale.py --series 2000000 \\
        --pg-url postgresql+psycopg://postgres@127.0.0.1/postgres --json nightly_scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from _scratch import scratch_postgres

START = date(2026, 10, 1)
FREQS = {  # freq: (dataset days, period, settings overrides)
    "h": (29, 24, {}),
    "d": (120, 7, {"k": 28}),
}


def plan(freq: str) -> tuple[int, int, dict]:
    """(dataset days, period, settings overrides) of a frequency."""
    from tsmeta.frequency import normalise_freq, steps_per_day

    freq = normalise_freq(freq)
    return FREQS.get(freq) or (23, steps_per_day(freq), {"history_days": 14, "train_days": 21})


def settings_for(work: Path, freq: str, url: str, algorithm: str | None = None):  # noqa: ANN201
    from tsmeta.config import load_settings

    days, _, extra = plan(freq)
    root = work / freq
    return load_settings(
        data_dir=str(root), dataset_path=str(root / "dataset"), model_dir=str(root / "models"),
        database_url=url, freq=freq, **({"history_days": 28} if freq == "h" else {}), **extra,
        **({"algorithm": algorithm} if algorithm else {}),
    )  # fmt: skip


def night_of(freq: str) -> date:
    return START + timedelta(days=plan(freq)[0] - 1)


def child(args: argparse.Namespace) -> int:
    """One stage in this process; prints its figures as JSON on the last line."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tsmeta import jobs

    settings = settings_for(args.work, args.freq, args.url, args.algorithm)
    night = night_of(args.freq)
    t, cpu = time.perf_counter(), time.process_time()
    out: dict = {}
    if args.child == "profile":
        res = jobs.profile_series(settings, night, "bench")
        out = {"clusters": len(res["clusters"]), "series": res["series"]}
    elif args.child == "history":  # the night before: its residual history, saved (built
        # from that night alone: the timed night reads a saved state, whatever it holds)
        once = settings.model_copy(update={"history_warmup_nights": 0})
        _, stats = jobs.score_night(once, night - timedelta(days=1), "bench-history")
        out = {"series_scored": stats["series_scored"]}
    elif args.child == "train":
        res = jobs.train_models(settings, night, "bench")
        bad = {c: r["error"] for c, r in res.items() if "error" in r}
        if bad:
            raise RuntimeError(f"training failed for {bad}")
        out = {"clusters": len(res)}
    else:
        frame, stats = jobs.score_night(settings, night, "bench")
        scored = time.perf_counter()
        written = jobs.write_night(settings, frame, night, "bench", stats["scored_clusters"])
        out = {"series": stats["series"], "scored": stats["series_scored"], "points": stats["points_scored"],
               "flagged": stats["flagged"], "written": written,
               "read_wait_s": stats["read_wait_seconds"],
               "read_adapt_score_s": round(scored - t, 1),
               "write_s": round(time.perf_counter() - scored, 1)}  # fmt: skip
        from tsmeta.data.synthetic import read_labels
        from tsmeta.evaluation import detection_quality

        start = datetime(night.year, night.month, night.day, tzinfo=UTC)
        q = detection_quality(frame.select("series_id", "ts"), read_labels(settings.dataset_path),
                              start, start + timedelta(days=1))  # fmt: skip
        out["precision"], out["recall"] = q["precision"], q["recall"]
    out.update(seconds=round(time.perf_counter() - t, 1),
               cpu_s=round(time.process_time() - cpu, 1),
               peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))  # fmt: skip
    print(json.dumps(out))
    return 0


def run_child(args: argparse.Namespace, stage: str, freq: str, url: str) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--url", url, "--freq", freq,
           "--work", str(args.work), "--series", str(args.series)]  # fmt: skip
    if args.algorithm:
        cmd += ["--algorithm", args.algorithm]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-5000:])
        raise SystemExit(f"stage {stage} ({freq}) failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def copy_state(src_url: str, dst_url: str) -> None:
    """Profile, clusters and model registry from one database to another (not timed)."""
    import polars as pl
    import sqlalchemy as sa

    from tsmeta.store.bulk import bulk_insert
    from tsmeta.store.schema import clusters, create_engine, create_schema, models, series_profile

    src, dst = create_engine(src_url), create_engine(dst_url)
    create_schema(dst)
    with src.connect() as a, dst.begin() as b:
        for table in (series_profile, clusters, models):
            b.execute(sa.delete(table))
        prof = pl.read_database(sa.select(series_profile), a)
        bulk_insert(b, series_profile, prof)
        for table in (clusters, models):
            rows = [dict(r._mapping) for r in a.execute(sa.select(table))]
            if rows:
                b.execute(sa.insert(table), rows)


def peers(settings, freq: str, n_sample: int, seed: int = 0) -> dict:  # noqa: ANN001
    """CPU seconds per series of statsforecast AutoETS / MSTL and seasonal naive + MAD."""
    import numpy as np
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS

    from tsmeta.data.io import scan_dataset, window_files
    from tsmeta.data.panel import build_panel
    from tsmeta.data.schema import validate_long_frame
    from tsmeta.frequency import pandas_alias, steps_per_day

    _, period, _ = plan(freq)
    spd = steps_per_day(freq)
    night = night_of(freq)
    hist = 70 if freq == "d" else 14
    first = night - timedelta(days=hist)
    files = window_files(settings.dataset_path, night, night + timedelta(days=1))
    ids = pd.read_parquet(files[night][0], columns=["series_id"])["series_id"].unique()
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(ids, min(n_sample, len(ids)), replace=False).tolist())
    import polars as pl

    lazy = scan_dataset(settings.dataset_path, first, night)  # only the sample is read
    frame = validate_long_frame(lazy.filter(pl.col("series_id").is_in(pick)), freq)
    begin = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(night.year, night.month, night.day, tzinfo=UTC)
    panel = build_panel(frame, freq, begin, end)
    # the peers take no gaps: carry the last observation forward (then backward)
    y = pd.DataFrame(panel.values.T).ffill().bfill().to_numpy().T
    stamps = pd.DatetimeIndex(panel.timestamps())
    df = pd.DataFrame({"unique_id": np.repeat(panel.series_ids, y.shape[1]),
                       "ds": np.tile(stamps, len(y)), "y": y.ravel()})  # fmt: skip
    h = spd
    out = {"sample": len(pick), "history_points": hist * spd}
    for name, model in (("AutoETS", AutoETS(season_length=period)),
                        ("MSTL", MSTL(season_length=period))):  # fmt: skip
        sf = StatsForecast(models=[model], freq=pandas_alias(freq), n_jobs=1)
        warm = df[df["unique_id"].isin(panel.series_ids[:2])]
        sf.forecast(df=warm, h=h, level=[99])  # first-call set-up is not per-series work
        t, cpu = time.perf_counter(), time.process_time()
        sf.forecast(df=df, h=h, level=[99])
        out[name] = {"cpu_s_per_series": (time.process_time() - cpu) / len(pick),
                     "wall_s_per_series": (time.perf_counter() - t) / len(pick)}  # fmt: skip
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(100):  # vectorised over the sample: repeat to get a measurable time
        fc = y[:, -period:][:, np.arange(h) % period]
        resid = y[:, period:] - y[:, :-period]
        mad = np.median(np.abs(resid - np.median(resid, 1, keepdims=True)), 1)
        _ = (fc - 4.45 * mad[:, None], fc + 4.45 * mad[:, None])
    out["seasonal naive + MAD"] = {
        "cpu_s_per_series": (time.process_time() - cpu) / (100 * len(pick)),
        "wall_s_per_series": (time.perf_counter() - t) / (100 * len(pick)),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=2_000_000)
    ap.add_argument("--daily-series", type=int, default=None, help="default: --series")
    ap.add_argument("--freqs", default="h,d", help="comma-separated: h, d, 5min, 1min, ...")
    ap.add_argument("--work", type=Path, default=Path(".tsmeta/bench-nightly"))
    ap.add_argument("--pg-url", default=None,
                    help="PostgreSQL server (a scratch database is created and dropped)")  # fmt: skip
    ap.add_argument("--sample", type=int, default=100, help="series the peers forecast")
    ap.add_argument("--algorithm", default=None,
                    help="meta-learner (default: the settings', e.g. TSMETA_ALGORITHM)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--url", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--freq", default="h", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    if args.child:
        return child(args)

    report: dict = {"runs": []}

    def save(rep: dict) -> None:  # after every stage: a crash keeps what was measured
        if args.json:
            args.json.write_text(json.dumps(rep, indent=2, default=str))

    from tsmeta.frequency import normalise_freq

    for freq in [normalise_freq(f) for f in args.freqs.split(",")]:
        n = args.daily_series or args.series if freq == "d" else args.series
        days, period, _ = plan(freq)
        root = args.work / freq
        manifest = root / "dataset" / "_meta" / "manifest.json"
        meta = json.loads(manifest.read_text()) if manifest.exists() else {}
        if meta.get("n_series") != n or meta.get("days") != days:
            from tsmeta.data.synthetic import write_synthetic_dataset

            print(f"generating {n:,} series x {days} days ({freq}, not timed) ...", flush=True)
            write_synthetic_dataset(root / "dataset", n, freq, days, START, seed=0)
        shutil.rmtree(root / "models", ignore_errors=True)
        sqlite_url = f"sqlite:///{root / 'tsmeta.db'}"
        (root / "tsmeta.db").unlink(missing_ok=True)
        urls, drop = {"sqlite": sqlite_url}, None
        if args.pg_url:
            pg, drop = scratch_postgres(args.pg_url)
            urls = {"postgresql": pg, **urls}
        try:
            main_url = next(iter(urls.values()))
            algorithm = settings_for(args.work, freq, main_url, args.algorithm).algorithm
            row = {"freq": freq, "series": n, "period": period, "algorithm": algorithm}
            report["runs"].append(row)
            print(f"[{freq}] profile ...", flush=True)
            row["profile"] = run_child(args, "profile", freq, main_url)
            print(f"[{freq}] profile: {row['profile']}\n[{freq}] train ...", flush=True)
            row["train"] = run_child(args, "train", freq, main_url)
            print(f"[{freq}] train: {row['train']}", flush=True)
            row["history_night"] = run_child(args, "history", freq, main_url)
            print(f"[{freq}] the night before (history): {row['history_night']}", flush=True)
            row["nightly"] = {}
            for db, url in urls.items():
                if url != main_url:
                    copy_state(main_url, url)
                print(f"[{freq}] nightly on {db} ...", flush=True)
                row["nightly"][db] = run_child(args, "nightly", freq, url)
                print(f"[{freq}] nightly on {db}: {row['nightly'][db]}", flush=True)
                save(report)
            print(f"[{freq}] peers on {args.sample} series ...", flush=True)
            row["peers"] = peers(settings_for(args.work, freq, main_url), freq, args.sample)
            print(f"[{freq}] peers: {row['peers']}", flush=True)
            save(report)
        finally:
            if drop is not None:
                drop()

    for row in report["runs"]:
        n = row["series"]
        print(f"\n{row['freq']}: {n:,} series, period "
              f"{row['period']}, night {night_of(row['freq'])}, {row['algorithm']}")  # fmt: skip
        print(f"  profile {row['profile']['seconds']} s ({row['profile']['clusters']} clusters, "
              f"peak {row['profile']['peak_rss_gib']} GiB); train {row['train']['seconds']} s "
              f"(peak {row['train']['peak_rss_gib']} GiB)")  # fmt: skip
        print(
            "  | database | nightly s | series/s | CPU s/series | peak GiB | read wait s | "
            "read+adapt+score s | write s | rows written | precision | recall |"
        )
        print("  |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for db, r in row["nightly"].items():
            r["cpu_s_per_series"] = r["cpu_s"] / n
            print(f"  | {db} | {r['seconds']} | {n / r['seconds']:,.0f} | "
                  f"{r['cpu_s_per_series']:.2e} | {r['peak_rss_gib']} | {r['read_wait_s']} | "
                  f"{r['read_adapt_score_s']} ({100 * r['read_adapt_score_s'] / r['seconds']:.0f}%) | "
                  f"{r['write_s']} ({100 * r['write_s'] / r['seconds']:.0f}%) | {r['written']:,} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |")  # fmt: skip
        ours = min(r["cpu_s_per_series"] for r in row["nightly"].values())
        p = row["peers"]
        print(f"  peers on {p['sample']} of the same series ({p['history_points']} points each):")
        for name in ("AutoETS", "MSTL", "seasonal naive + MAD"):
            c = p[name]["cpu_s_per_series"]
            p[name]["extrapolated_cpu_hours"] = c * n / 3600
            p[name]["ratio_to_tsmeta"] = c / ours
            print(f"    {name:<22} {c:.2e} CPU s/series -> {c * n / 3600:,.1f} CPU hours for "
                  f"{n:,}; {c / ours:,.1f}x tsmeta's CPU per series")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
