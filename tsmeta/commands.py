"""What each ``tsmeta`` command does, given its parsed arguments (``tsmeta.cli`` parses them).

Each returns the process's exit code; heavy imports happen inside, so ``tsmeta --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path


def _settings(args: argparse.Namespace):  # noqa: ANN202
    """The settings of a command: its options over TSMETA_* and the TOML file; where no step
    is asked for, the step the dataset records."""
    from tsmeta.config import load_settings

    settings = _settings_as_given(args)
    recorded = _recorded_freq(args, settings)
    return settings if recorded is None else load_settings(data_dir=getattr(args, "data_dir", None),
                                                           freq=recorded)  # fmt: skip


def _recorded_freq(args: argparse.Namespace, settings) -> str | None:  # noqa: ANN001
    """The step the dataset records, where no step was asked for (no --freq, TSMETA_FREQ or
    TOML ``freq``) and it is not the default one: a 5-minute dataset needs no --freq."""
    from tsmeta.data.dataset_step import dataset_freq

    if getattr(args, "freq", None) or "freq" in settings.model_fields_set:
        return None
    recorded = dataset_freq(settings.dataset_path)
    return recorded if recorded not in (None, settings.freq) else None


def _settings_as_given(args: argparse.Namespace):  # noqa: ANN202
    from tsmeta.config import load_settings

    return load_settings(data_dir=getattr(args, "data_dir", None), freq=getattr(args, "freq", None))


def _config(args: argparse.Namespace) -> dict:
    """Settings given on the command line (the others come from env vars and TOML)."""
    out = {}
    if getattr(args, "data_dir", None):
        out["data_dir"] = str(args.data_dir)
    if getattr(args, "freq", None):
        out["freq"] = args.freq
    else:
        recorded = _recorded_freq(args, _settings_as_given(args))
        if recorded is not None:
            out["freq"] = recorded
    if getattr(args, "max_cluster_size", None) is not None:
        out["max_cluster_size"] = args.max_cluster_size
    return out


def _require_dataset(args: argparse.Namespace) -> None:
    """Fail fast, before a flow starts, when there is no dataset to read."""
    from tsmeta.jobs import latest_date

    latest_date(_settings(args))


def _no_store(settings) -> str | None:  # noqa: ANN001
    """Where a SQLite store that is not there yet would be (None: it exists, it is in
    memory, or the store is a server): commands that only read it say so instead of
    creating an empty one."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    return None if Path(path).is_file() else path


def _store(settings):  # noqa: ANN001, ANN202 - Settings -> sqlalchemy Engine
    """The anomaly store of a command that only reads it; a missing SQLite file is an error."""
    from tsmeta import jobs

    missing = _no_store(settings)
    if missing:
        raise FileNotFoundError(
            f"no database at {missing}: run `tsmeta nightly` (or `tsmeta demo`) first, or point "
            "--data-dir / TSMETA_DATABASE_URL at an existing one"
        )
    return jobs.engine_for(settings)


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_generate(args: argparse.Namespace) -> int:
    from tsmeta import progress
    from tsmeta.data.synthetic import write_synthetic_dataset

    settings = _settings_as_given(args)  # a new dataset: the step asked for, or the default
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
    from pipelines.flows import RunFailed, meta_train

    try:
        res = meta_train(as_of=args.as_of, clusters=args.cluster or None, algorithm=args.algorithm,
                         meta_steps=args.meta_steps, config=_config(args))  # fmt: skip
    except RunFailed as exc:  # every cluster failed: what each one raised is in the result
        _print_json(exc.result)
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
    from pipelines.flows import RunFailed, backfill

    try:
        res = backfill(start=args.start, end=args.end, force=args.force, config=_config(args))
    except RunFailed as exc:  # some nights failed (the others were scored): each one's error
        _print_json(exc.result)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_json(res)
    return 0


def cmd_anomalies(args: argparse.Namespace) -> int:
    import polars as pl

    from tsmeta.data.panel import freq_timedelta
    from tsmeta.events import episodes
    from tsmeta.store.queries import query_anomalies, query_events

    start, end = args.start, args.end
    if args.night is not None:
        if start or end:
            raise ValueError("give either --night or --start/--end, not both")
        start = end = args.night
    settings = _settings(args)
    missing = _no_store(settings)
    if missing:
        print(f"no anomalies stored yet: run `tsmeta nightly` first (no database at {missing})",
              file=sys.stderr)  # fmt: skip
        return 0
    engine = _store(settings)
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

    return latest_night(_store(settings)) or jobs.latest_date(settings)


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
