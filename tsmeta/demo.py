"""``tsmeta demo``: the whole path on a generated dataset, through the real flows.

generate (skipped when the same dataset already exists) -> profile flow -> meta_train flow
(Ray) -> nightly flow for the last generated day -> summary, top anomalies, and precision /
recall against the generator's labels.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

__all__ = ["run_demo"]

DEMO_START = date(2026, 11, 1)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(
    series: int | None = None,
    days: int = 29,
    data_dir: Path | None = None,
    seed: int = 0,
    freq: str = "h",
) -> int:
    """``series`` defaults to 10,000 hourly or daily series, and to the same number of points
    a night below an hour (833 series at 5 minutes). Each frequency is its own dataset: the
    default data folder is ``tsmeta-data/demo`` for hourly data, ``tsmeta-data/demo-<freq>``
    otherwise."""
    from pipelines.flows import meta_train, nightly, profile
    from tsmeta import jobs
    from tsmeta.config import load_settings
    from tsmeta.data.synthetic import read_labels
    from tsmeta.evaluation import detection_quality
    from tsmeta.frequency import normalise_freq, steps_per_day

    freq = normalise_freq(freq)
    spd = steps_per_day(freq)
    if series is None:
        series = 10_000 if spd <= 24 else max(100, 10_000 * 24 // spd)
    data_dir = Path(data_dir or ("tsmeta-data/demo" if freq == "h" else f"tsmeta-data/demo-{freq}"))
    config = {"data_dir": str(data_dir), "freq": freq}
    settings = load_settings(**config)
    dataset = settings.dataset_path
    night = DEMO_START + timedelta(days=days - 1)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    _ensure_dataset(dataset, series, freq, days, seed)
    timings["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(
        f"[2/4] profile flow: periods and clusters from the {settings.history_days} days before {night}"
    )
    prof = profile(as_of=night, config=config)
    _say(f"      clusters: {prof['clusters']}")
    timings["profile"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(
        f"[3/4] meta_train flow: one meta-learned model ({settings.algorithm}) per cluster on local Ray ({settings.train_days} days)"
    )
    trained = meta_train(as_of=night, config=config)
    _print_trained(trained)
    timings["meta_train"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(f"[4/4] nightly flow for {night}: adapt from K={settings.k} points, score, write")
    run = nightly(night=night, config=config)
    timings["nightly"] = time.perf_counter() - t

    stored = jobs.read_night(settings, night)
    night_start, night_end = jobs.night_bounds(night)
    quality = detection_quality(
        stored.select("series_id", "ts"), read_labels(dataset), night_start, night_end
    )

    _print_run(run, stored, settings, night)
    _print_quality(quality)
    t = time.perf_counter()
    from tsmeta.report import write_report

    report = write_report(settings, night, settings.data_dir / "reports" / f"report-{night}.html")
    timings["report"] = time.perf_counter() - t
    _say("\n=== timings (s) ===")
    _say(
        "  "
        + "  ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f"  total {sum(timings.values()):.1f}"
    )
    _print_where(settings, report, stored, data_dir, freq, night)
    if run["written"] == 0:
        print("demo: no anomalies were written", file=sys.stderr)
        return 1
    return 0


def _ensure_dataset(dataset: Path, series: int, freq: str, days: int, seed: int) -> None:
    """Generate the demo's dataset unless the same one is already there."""
    from tsmeta.data.synthetic import write_synthetic_dataset

    wanted = {
        "n_series": series,
        "freq": freq,
        "days": days,
        "start": DEMO_START.isoformat(),
        "seed": seed,
    }
    manifest_file = dataset / "_meta" / "manifest.json"
    existing = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    if all(existing.get(k) == v for k, v in wanted.items()):
        _say(
            f"[1/4] dataset {dataset} already generated ({series:,} series, {days} days): reusing it"
        )
    else:
        shutil.rmtree(dataset, ignore_errors=True)
        _say(f"[1/4] generating {series:,} series x {days} days at {freq} into {dataset} ...")
        m = write_synthetic_dataset(dataset, series, freq, days, DEMO_START, seed)
        _say(f"      {m['rows']:,} rows, {m['anomalies']:,} labelled anomalies")


def _print_run(run: dict, stored: object, settings: object, night: date) -> None:
    """The run's counts per cluster, its shared events and its top episodes."""
    import polars as pl

    from tsmeta import jobs
    from tsmeta.data.panel import freq_timedelta
    from tsmeta.events import episodes
    from tsmeta.store.queries import query_events

    _say("\n=== run summary ===")
    _say(f"run {run['run_id']}  status {run['status']}")
    _say(f"series {run['series']:,}  scored {run['series_scored']:,}  points {run['points_scored']:,}  "
         f"flagged {run['flagged']:,} ({run['flagged'] / max(run['points_scored'], 1):.3%})  "
         f"written {run['written']:,}")  # fmt: skip
    for cid, c in sorted(run["clusters"].items()):
        _say(
            f"  {cid:>10}: {c['series']:>6,} series  {c['flagged']:>5,} flagged  model v{c.get('model_version', '-')}"
        )
    _say("\n=== top anomalies (consecutive flagged points of a series are one) ===")
    shared = query_events(jobs.engine_for(settings), night, night)
    if shared.height:
        _say(f"{shared.height} shared event(s) (a share of a cluster flagged the same way at once): "
             + "; ".join(f"{r['cluster_id']} {r['direction']} {str(r['start_ts'])[11:16]}-"
                         f"{str(r['end_ts'])[11:16]} ({r['n_series']} series)"
                         for r in shared.head(5).iter_rows(named=True)))  # fmt: skip
    with pl.Config(tbl_rows=10, tbl_cols=10, tbl_width_chars=150, float_precision=2):
        own = stored.filter(pl.col("event_id").is_null())  # events are listed above
        top = episodes(own, freq_timedelta(settings.freq)).head(10)
        _say(str(top.with_columns(pl.col("start", "end", "peak_ts").dt.strftime("%m-%d %H:%M")).select(
            "series_id", "start", "end", "points", "peak_ts", "value", "forecast", "surprise",
            "direction", "cluster_id")))  # fmt: skip


def _print_quality(quality: dict) -> None:
    """Precision and recall against the generator's labels, per anomaly kind."""
    _say("\n=== detection quality against the generator's labels ===")
    _say(f"precision (flagged points inside a labelled anomaly): {quality['precision']:.3f} "
         f"({quality['true_flagged_points']}/{quality['flagged_points']})")  # fmt: skip
    _say(f"recall (labelled anomalies with a flagged point):     {quality['recall']:.3f} "
         f"({quality['events_detected']}/{quality['events']})")  # fmt: skip
    for k in quality["per_kind"]:
        _say(f"  {k['kind']:>16}: recall {k['recall']:.2f} ({k['detected']}/{k['events']})")


def _print_trained(trained: dict) -> None:
    """Each cluster's model version and validation error, or its failure."""
    for cid, res in sorted(trained["clusters"].items()):
        if "error" in res:
            _say(f"      {cid}: FAILED {res['error']}")
        else:
            mm = res["metrics"]
            _say(f"      {cid}: v{res['version']}  val query MSE adapted {mm['val_query_mse_adapted']:.3f}"
                 f" vs unadapted {mm['val_query_mse_unadapted']:.3f}  ({mm['seconds']:.1f}s)")  # fmt: skip


def _print_where(settings: object, report: dict, stored: object, data_dir: Path, freq: str,
                 night: date) -> None:  # fmt: skip
    """Where the anomalies and the report are, and how to look further."""
    _say(f"\nanomalies are in {settings.database_url}, e.g.:")
    _say(f"  sqlite3 {settings.database_url.removeprefix('sqlite:///')} "
         "\"select series_id, ts, value, score from anomalies order by score desc limit 5\"")  # fmt: skip
    _say(
        f"the night's HTML report (summary, per cluster, plots of the top anomalies): {report['path']}"
    )
    sid = stored.row(0, named=True)["series_id"] if stored.height else "SERIES_ID"
    _say(f"  one series: {sys.argv[0] if sys.argv[0].endswith('tsmeta') else 'tsmeta'} plot "
         f"{sid} --data-dir {data_dir}{'' if freq == 'h' else ' --freq ' + freq} --date {night} "
         f"--out {Path(data_dir) / 'reports' / f'{sid}.png'}")  # fmt: skip
