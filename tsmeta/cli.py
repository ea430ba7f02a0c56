"""The ``tsmeta`` command.

Every command works on the embedded defaults (SQLite under the data directory, local Ray,
Prefect's temporary local API) and honours the settings (``TSMETA_*`` env vars, TOML).
Errors are one line with the fix and exit code 2; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import date
from pathlib import Path

from tsmeta.commands import (
    BENCHMARKS,
    _settings,
    cmd_anomalies,
    cmd_backfill,
    cmd_db_upgrade,
    cmd_demo,
    cmd_evaluate,
    cmd_generate,
    cmd_ingest,
    cmd_nightly,
    cmd_plot,
    cmd_profile,
    cmd_report,
    cmd_train,
)

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
    p = argparse.ArgumentParser(
        prog="tsmeta", description="Meta-learned anomaly detection for many time series."
    )
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_: str, data_help: str | None = None) -> argparse.ArgumentParser:  # noqa: ANN001
        sp = sub.add_parser(name, help=help_, description=help_)
        _common(sp)
        sp.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help=data_help or "root of data, database and models (TSMETA_DATA_DIR)",
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

    _data_commands(add)
    _pipeline_commands(add)
    _query_commands(add)
    _evaluate_command(add)
    _admin_commands(add, sub)
    return p


def _data_commands(add) -> None:  # noqa: ANN001 - build_parser's add
    """generate, ingest"""
    g = add("generate", cmd_generate, "write a synthetic dataset with labelled anomalies")
    g.add_argument("--series", type=_positive, default=10_000)
    g.add_argument("--days", type=_positive, default=29)
    g.add_argument("--start", type=_iso_date, default=date(2026, 11, 1))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--anomaly-rate", type=float, default=0.02, help="anomalies per series and day")
    g.add_argument("--family", choices=["default", "business", "heavy"], default="default",
                   help="default: the generator's corpus; business: hourly business metrics "
                        "(multiplicative seasons, count noise, a shared holiday, breaks); heavy: "
                        "the generator's corpus with Student's t noise")  # fmt: skip
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


def _pipeline_commands(add) -> None:  # noqa: ANN001 - build_parser's add
    """profile, train, nightly, backfill"""
    from tsmeta.meta import ALGORITHMS

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


def _query_commands(add) -> None:  # noqa: ANN001 - build_parser's add
    """anomalies, plot, report"""
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


def _evaluate_command(add) -> None:  # noqa: ANN001 - build_parser's add
    """evaluate (and the benchmarks it runs)"""
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


def _admin_commands(add, sub) -> None:  # noqa: ANN001 - build_parser's add
    """db upgrade, demo"""
    db = sub.add_parser("db", help="database administration")
    dbs = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbs.add_parser("upgrade", help="create or upgrade the schema")
    up.add_argument("--data-dir", type=Path, default=None)
    _common(up)
    up.set_defaults(func=cmd_db_upgrade)

    d = add("demo", cmd_demo, "the whole path on a generated dataset: generate, profile, train, nightly",
            "root of the demo's data, database and models (default tsmeta-data/demo, or "
            "tsmeta-data/demo-<freq> below an hour; TSMETA_DATA_DIR is not read)")  # fmt: skip
    d.add_argument("--series", type=_positive, default=None,
                   help="series generated (default 10,000; below an hour the same points a "
                        "night: 833 at 5min)")  # fmt: skip
    d.add_argument(
        "--days", type=_positive, default=29, help="days generated (the last one is scored)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(data_dir=None)


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
        from tsmeta.database_url import redact_url

        try:
            url = redact_url(_settings(args).database_url)
        except Exception:  # noqa: BLE001
            url = "the database"
        cause = str(getattr(exc, "orig", exc)).strip().splitlines()
        return (f"cannot reach {url} ({cause[0] if cause else type(exc).__name__}): check "
                "TSMETA_DATABASE_URL and that the server is running")  # fmt: skip
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # a setting's value: name it, its variable and why
        parts = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            var = f" (TSMETA_{name.upper()})" if err["loc"] else ""
            parts.append(f"setting {name}{var}: {err['msg']}, got {err.get('input')!r}")
        return "; ".join(parts) + "; see docs/settings.md"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
