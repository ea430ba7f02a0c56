"""The ``tsmeta`` command.

Every command works on the embedded defaults (SQLite under the data directory, local Ray,
Prefect's temporary local API) and honours the settings (``TSMETA_*`` env vars, TOML).
Errors are one line with the fix and exit code 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

__all__ = ["main"]


def _embedded_env() -> None:
    """Project-local Prefect state, no telemetry; set before Prefect or Ray is imported."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".tsmeta/prefect").resolve()))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its server's SQLite file
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary server's first start migrates its database (about 25 s on 2 cores,
    # longer on a busy machine): Prefect's default wait is too short for a fresh clone
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: expected YYYY-MM-DD") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _freq(text: str) -> str:
    from tsmeta.frequency import normalise_freq

    try:
        return normalise_freq(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _settings(args: argparse.Namespace):  # noqa: ANN202
    from tsmeta.config import load_settings

    return load_settings(data_dir=getattr(args, "data_dir", None), freq=getattr(args, "freq", None))


def _config(args: argparse.Namespace) -> dict:
    """Settings given on the command line (the others come from env vars and TOML)."""
    out = {}
    if getattr(args, "data_dir", None):
        out["data_dir"] = str(args.data_dir)
    if getattr(args, "freq", None):
        out["freq"] = args.freq
    if getattr(args, "max_cluster_size", None) is not None:
        out["max_cluster_size"] = args.max_cluster_size
    return out


def _require_dataset(args: argparse.Namespace) -> None:
    """Fail fast, before a flow starts, when there is no dataset to read."""
    from tsmeta.jobs import latest_date

    latest_date(_settings(args))


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- commands -------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from tsmeta import progress
    from tsmeta.data.synthetic import write_synthetic_dataset

    settings = _settings(args)
    out = Path(args.out) if args.out else settings.dataset_path
    with progress.bar("generate", total=args.series) as pbar:
        manifest = write_synthetic_dataset(
            out, args.series, settings.freq, args.days, args.start, args.seed, args.anomaly_rate,
            progress=pbar.update, family=args.family,
        )  # fmt: skip
    print(f"wrote {manifest['rows']:,} rows of {args.series:,} series ({manifest['anomalies']:,} "
          f"labelled anomalies) to {out} in {manifest['seconds']}s")  # fmt: skip
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from tsmeta.data.dataset_step import check_dataset_freq, record_dataset_freq
    from tsmeta.data.io import check_no_overlap, read_long_raw, write_partitioned
    from tsmeta.data.schema import on_grid

    settings = _settings(args)
    src = Path(args.file)
    check_dataset_freq(settings.dataset_path, settings.freq)  # before anything is read
    frame, grid = on_grid(read_long_raw(src), settings.freq, args.aggregate)
    if grid["moved"] or grid["combined"]:
        print(f"put {grid['rows']:,} rows on the {grid['freq']} grid (set the step with --freq "
              f"or TSMETA_FREQ): {grid['moved']:,} moved to the start of their step, "
              f"{grid['combined']:,} combined into another ({grid['aggregate']}); "
              f"{grid['points']:,} point(s)")  # fmt: skip
    if grid["empty_steps"]:
        print(f"{grid['empty_steps']:,} steps between a series' first and last point have no "
              "point (missing: scoring leaves them out)")  # fmt: skip
    part = args.part or f"ingest-{src.stem}"
    check_no_overlap(frame, settings.dataset_path, part)  # before anything is written
    files = write_partitioned(frame, settings.dataset_path, part)
    record_dataset_freq(settings.dataset_path, settings.freq)
    days = frame.get_column("ts").dt.date()
    print(f"ingested {frame.height:,} points of {frame.get_column('series_id').n_unique():,} series "
          f"({days.min()}..{days.max()}) into {settings.dataset_path}: {files} date partition(s), "
          f"file {part}.parquet in each (re-ingesting {src.name} replaces it)")  # fmt: skip
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    _require_dataset(args)
    from pipelines.flows import profile

    _print_json(profile(as_of=args.as_of, recluster=args.recluster, config=_config(args)))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _require_dataset(args)
    from pipelines.flows import meta_train

    res = meta_train(as_of=args.as_of, clusters=args.cluster or None, algorithm=args.algorithm,
                     meta_steps=args.meta_steps, config=_config(args))  # fmt: skip
    _print_json(res)
    return 0 if res["status"] == "completed" else 1


def cmd_nightly(args: argparse.Namespace) -> int:
    _require_dataset(args)
    from pipelines.flows import nightly

    res = nightly(night=args.night, config=_config(args))
    _print_json(res)  # what a partial night left out is on stderr already (the job's log)
    return 0 if res["status"] in ("completed", "partial") else 1


def cmd_backfill(args: argparse.Namespace) -> int:
    _require_dataset(args)
    from pipelines.flows import backfill

    res = backfill(start=args.start, end=args.end, force=args.force, config=_config(args))
    _print_json(res)
    return 0 if not res["failed"] else 1


def cmd_anomalies(args: argparse.Namespace) -> int:
    import polars as pl

    from tsmeta import jobs
    from tsmeta.data.panel import freq_timedelta
    from tsmeta.events import episodes
    from tsmeta.store.queries import query_anomalies, query_events

    start, end = args.start, args.end
    if args.night is not None:
        if start or end:
            raise ValueError("give either --night or --start/--end, not both")
        start = end = args.night
    settings = _settings(args)
    engine = jobs.engine_for(settings)
    by = args.by or ("episode" if args.format == "table" else "point")
    common = 0  # flagged points of shared events left out of a table of episodes
    top = args.top or (20 if args.format == "table" else None)  # exports are whole
    frame = query_anomalies(engine, start, end, args.series, args.cluster, args.min_score,
                            top if by == "point" else None)  # fmt: skip
    if frame.height == 0:
        from tsmeta.store.queries import latest_night

        empty = latest_night(engine) is None
        print("no anomalies stored yet: run `tsmeta nightly` first" if empty else "no anomalies match these filters",
              file=sys.stderr)  # fmt: skip
    elif by == "episode":  # consecutive flagged points of a series, one way: one anomaly
        # (the points of shared events are listed as their events, in a table)
        own = frame if args.format != "table" else frame.filter(pl.col("event_id").is_null())
        common = frame.height - own.height
        frame = episodes(own, freq_timedelta(settings.freq))
        frame = frame.head(top) if top else frame
    if args.format == "csv":
        sys.stdout.write(frame.write_csv())
    elif args.format == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        shared = query_events(engine, start, end, args.cluster) if not args.series else None
        with pl.Config(tbl_rows=max(top, 20), tbl_cols=14, tbl_width_chars=180, float_precision=3):
            if shared is not None and shared.height:
                print(f"{shared.height} shared event(s): a share of a cluster's series flagged the "
                      "same way at once (their points are marked with the event_id)")  # fmt: skip
                print(shared.drop("event_id"))
            if by == "episode":
                if frame.height:
                    also = f"; {common:,} points of shared events not listed" if common else ""
                    print(f"top {frame.height} anomalies (consecutive flagged points of a series, "
                          f"one way, are one; end is the step after the last{also})")  # fmt: skip
                    print(frame.drop("event_id"))
            else:
                print(frame.drop("run_id", "model_version", "residual"))
    return 0


def _night_or_latest(args: argparse.Namespace, settings) -> date:  # noqa: ANN001
    """--date, else the latest night in the database, else the last date of the dataset."""
    if args.date is not None:
        return args.date
    from tsmeta import jobs
    from tsmeta.store.queries import latest_night

    return latest_night(jobs.engine_for(settings)) or jobs.latest_date(settings)


def cmd_plot(args: argparse.Namespace) -> int:
    from tsmeta.report import plot_series

    settings = _settings(args)
    night = _night_or_latest(args, settings)
    out = args.out or Path(f"{args.series_id}_{night}.png")
    path = plot_series(settings, args.series_id, night, out, args.history_days)
    print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tsmeta.report import write_report

    settings = _settings(args)
    night = _night_or_latest(args, settings)
    out = args.out or settings.data_dir / "reports" / f"report-{night}.html"
    res = write_report(settings, night, out, args.top, args.history_days)
    print(f"wrote {res['path']}: night {night}, run {res['status']}, {res['flagged']:,} anomalies, "
          f"{res['plots']} series plotted")  # fmt: skip
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    extra = list(args.benchmark_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if extra and not args.benchmark:
        raise ValueError(f"unexpected arguments {extra}: they are for --benchmark NAME")
    if args.benchmark:
        return _run_benchmark(args.benchmark, extra)
    _require_dataset(args)
    from tsmeta import jobs
    from tsmeta.scorecard import evaluate_nights, format_scorecard

    settings = _settings(args)
    last = args.end or jobs.latest_date(settings)
    first = args.start or last
    card = evaluate_nights(settings, first, last)
    print(format_scorecard(card))
    if args.json:
        args.json.write_text(json.dumps(card, indent=2, default=str))
    return 0


BENCHMARKS = {
    "m4": "m4_hourly.py",  # sMAPE/MASE on M4 Hourly against seasonal naive, statsforecast, ...
    "detection": "detection.py",  # event P/R/F1 and PR-AUC against baselines
    "throughput": "adapt_throughput.py",
}


def _run_benchmark(name: str, extra: list[str]) -> int:
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / BENCHMARKS[name]
    if not script.is_file():
        raise FileNotFoundError(
            f"{script} not found: the benchmarks ship with the source repository; run "
            "`tsmeta evaluate --benchmark` from a clone"
        )
    argv = sys.argv
    sys.argv = [str(script), *extra]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from tsmeta import jobs
    from tsmeta.store.migrate import current_revision

    settings = _settings(args)
    engine = jobs.engine_for(settings)  # runs the migrations
    print(f"{settings.database_url}: schema at revision {current_revision(engine)} (head)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tsmeta.demo import run_demo

    return run_demo(series=args.series, days=args.days, data_dir=args.data_dir, seed=args.seed,
                    freq=args.freq or "h")  # fmt: skip


# --- parser ---------------------------------------------------------------------------


def _common(sp: argparse.ArgumentParser, top: bool = False) -> None:
    """--verbose / --progress / --no-progress, before the command (``top``: they set the
    defaults) and after it (they only override what was given)."""
    keep = argparse.SUPPRESS
    sp.add_argument("--verbose", action="store_true", default=False if top else keep,
                    help="show tracebacks on errors")  # fmt: skip
    sp.add_argument("--progress", dest="progress", action="store_true",
                    default=None if top else keep,
                    help="show progress bars even when stderr is not a terminal")  # fmt: skip
    sp.add_argument("--no-progress", dest="progress", action="store_false",
                    default=None if top else keep,
                    help="no progress bars (also TSMETA_PROGRESS=off)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from tsmeta.meta import ALGORITHMS

    p = argparse.ArgumentParser(
        prog="tsmeta", description="Meta-learned anomaly detection for many time series."
    )
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp)
        sp.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="root of data, database and models (TSMETA_DATA_DIR)",
        )
        sp.add_argument(
            "--freq",
            type=_freq,
            default=None,
            help="the data's step, 1 minute to 1 day: 1min, 5min, 15min, h, d, ... "
            "(TSMETA_FREQ; default h)",
        )
        sp.set_defaults(func=func)
        return sp

    g = add("generate", cmd_generate, "write a synthetic dataset with labelled anomalies")
    g.add_argument("--series", type=_positive, default=10_000)
    g.add_argument("--days", type=_positive, default=29)
    g.add_argument("--start", type=_iso_date, default=date(2026, 11, 1))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--anomaly-rate", type=float, default=0.02, help="anomalies per series and day")
    g.add_argument("--family", choices=["default", "business"], default="default",
                   help="default: the generator's corpus; business: hourly business metrics "
                        "(multiplicative seasons, count noise, a shared holiday, breaks)")  # fmt: skip
    g.add_argument(
        "--out", type=Path, default=None, help="dataset folder (default: settings.dataset_path)"
    )

    ig = add("ingest", cmd_ingest, "validate a CSV/Parquet file of series_id, ts, value and "
             "add it to the dataset (date-partitioned Parquet)")  # fmt: skip
    ig.add_argument("file", help="a .csv or .parquet file in the long format")
    ig.add_argument("--aggregate", choices=["mean", "last", "sum", "max"], default=None,
                    help="how points of a series within one step are combined: timestamps "
                         "off the grid go to the step that contains them and are combined "
                         "by mean unless given; rows with the same timestamp are an error "
                         "unless given")  # fmt: skip
    ig.add_argument("--part", default=None,
                    help="file name inside each date partition (default: ingest-<file stem>)")  # fmt: skip

    pr = add("profile", cmd_profile, "detect periods and assign clusters")
    pr.add_argument(
        "--as-of", type=_iso_date, default=None, help="profile the days before this date"
    )
    pr.add_argument(
        "--recluster",
        action="store_true",
        help="refit every cluster instead of assigning series to the stored ones "
        "(then run `tsmeta train`)",
    )
    pr.add_argument(
        "--max-cluster-size", type=int, default=None,
        help="split period groups larger than this by shape (TSMETA_MAX_CLUSTER_SIZE)",
    )  # fmt: skip

    t = add("train", cmd_train, "meta-train one model per cluster (Ray)")
    t.add_argument(
        "--as-of", type=_iso_date, default=None, help="train on the days before this date"
    )
    t.add_argument("--cluster", action="append", help="only this cluster (repeatable)")
    t.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default=None,
        help="meta-learner (default: TSMETA_ALGORITHM, else the settings' default)",
    )
    t.add_argument("--meta-steps", type=_positive, default=None)

    n = add("nightly", cmd_nightly, "adapt, score and store one night's anomalies")
    n.add_argument("--night", "--date", dest="night", type=_iso_date, default=None,
                   help="the day to score (default: today minus TSMETA_NIGHT_LAG_DAYS, i.e. yesterday)")  # fmt: skip

    b = add("backfill", cmd_backfill, "score a range of nights, night by night (resumable)")
    b.add_argument("--start", type=_iso_date, required=True, help="first night (YYYY-MM-DD)")
    b.add_argument("--end", type=_iso_date, required=True, help="last night, inclusive")
    b.add_argument("--force", action="store_true", help="re-score nights that already completed")

    a = add("anomalies", cmd_anomalies, "list stored anomalies (default: the latest night)")
    a.add_argument("--night", "--date", dest="night", type=_iso_date, default=None,
                   help="one night (YYYY-MM-DD)")  # fmt: skip
    a.add_argument("--start", type=_iso_date, default=None, help="first night of a range")
    a.add_argument("--end", type=_iso_date, default=None, help="last night of a range (inclusive)")
    a.add_argument("--series", action="append", help="only this series id (repeatable)")
    a.add_argument("--cluster", action="append", help="only this cluster (repeatable)")
    a.add_argument("--min-score", type=float, default=None, help="only scores >= this (0..1)")
    a.add_argument(
        "--top", type=_positive, default=None,
        help="at most this many rows, highest score first (default: 20 in a table; every "
             "matching row with --format csv or json)",
    )  # fmt: skip
    a.add_argument("--format", choices=["table", "csv", "json"], default="table")
    a.add_argument(
        "--by", choices=["episode", "point"], default=None,
        help="one row per episode (a series' consecutive flagged points, one way) or per "
             "flagged point (default: episodes in a table, points in csv and json exports)",
    )  # fmt: skip

    pl_ = add("plot", cmd_plot, "PNG of a series: recent history, the night's forecast band, flags")
    pl_.add_argument("series_id", help="the series to draw")
    pl_.add_argument("--date", "--night", dest="date", type=_iso_date, default=None,
                     help="the night (default: the latest night in the database)")  # fmt: skip
    pl_.add_argument("--history-days", type=_positive, default=7, help="days of history drawn")
    pl_.add_argument("--out", type=Path, default=None, help="PNG path (default: SERIES_DATE.png)")

    r = add("report", cmd_report, "one self-contained HTML report of a night, with plots")
    r.add_argument("--date", "--night", dest="date", type=_iso_date, default=None,
                   help="the night (default: the latest night in the database)")  # fmt: skip
    r.add_argument("--top", type=_positive, default=10, help="series of the top anomalies plotted")
    r.add_argument("--history-days", type=_positive, default=7, help="days of history per plot")
    r.add_argument("--out", type=Path, default=None,
                   help="HTML path (default: <data_dir>/reports/report-DATE.html)")  # fmt: skip

    e = add("evaluate", cmd_evaluate,
            "forecast error, flag rate and (with labels) detection quality over a range of "
            "nights; or run a benchmark (--benchmark)")  # fmt: skip
    e.add_argument("--start", type=_iso_date, default=None, help="first night (default: --end)")
    e.add_argument("--end", type=_iso_date, default=None,
                   help="last night (default: the dataset's last date)")  # fmt: skip
    e.add_argument("--json", type=Path, default=None, help="also write the figures here")
    e.add_argument("--benchmark", choices=sorted(BENCHMARKS), default=None,
                   help="run benchmarks/<script> instead (m4: M4 Hourly accuracy; detection: "
                        "detection quality against baselines; throughput); arguments after "
                        "`--` go to the script")  # fmt: skip
    e.add_argument("benchmark_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    db = sub.add_parser("db", help="database administration")
    dbs = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbs.add_parser("upgrade", help="create or upgrade the schema")
    up.add_argument("--data-dir", type=Path, default=None)
    _common(up)
    up.set_defaults(func=cmd_db_upgrade)

    d = add(
        "demo", cmd_demo, "the whole path on a generated dataset: generate, profile, train, nightly"
    )
    d.add_argument("--series", type=_positive, default=None,
                   help="series generated (default 10,000; below an hour the same points a "
                        "night: 833 at 5min)")  # fmt: skip
    d.add_argument(
        "--days", type=_positive, default=29, help="days generated (the last one is scored)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(data_dir=None)
    return p


def main(argv: list[str] | None = None) -> int:
    _embedded_env()
    args = build_parser().parse_args(argv)
    from tsmeta import progress

    progress.set_enabled(args.progress)
    # errors are reported once, by us: Prefect's own log lines would add tracebacks. Prefect
    # reads this when it is first imported, which the commands do lazily, after this point.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if args.verbose else "CRITICAL")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("tsmeta: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for users, traceback on --verbose
        if args.verbose:
            raise
        print(f"tsmeta {args.command}: error: {_one_line(exc, args)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException, args: argparse.Namespace) -> str:
    """The error as one line with the fix; database connection failures name the URL."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        from tsmeta.config import redact_url

        try:
            url = redact_url(_settings(args).database_url)
        except Exception:  # noqa: BLE001
            url = "the database"
        cause = str(getattr(exc, "orig", exc)).strip().splitlines()
        return (f"cannot reach {url} ({cause[0] if cause else type(exc).__name__}): check "
                "TSMETA_DATABASE_URL and that the server is running")  # fmt: skip
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
