import json
import os

import pytest

from tsmeta.cli import main


def test_generate_writes_dataset(tmp_path, capsys):
    assert main(["generate", "--series", "50", "--days", "2", "--out", str(tmp_path / "ds")]) == 0
    manifest = json.loads((tmp_path / "ds" / "_meta" / "manifest.json").read_text())
    assert manifest["n_series"] == 50 and manifest["days"] == 2
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["generate", "--series", "0"], "must be at least 1"),
        (["generate", "--start", "yesterday"], "expected YYYY-MM-DD"),
        (["generate", "--freq", "weekly"], "unknown unit 'weekly'"),
        (["profile", "--freq", "30s"], "shorter than a minute"),
        (["nightly", "--night", "2026-13-01"], "expected YYYY-MM-DD"),
        (["train", "--algorithm", "reptile"], "'maml', 'fomaml', 'anil'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_runtime_errors_are_one_line_with_exit_2(tmp_path):
    """The real command in a fresh process: one line on stderr, exit code 2."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    for cmd in (["profile", "--as-of", "2026-11-29"], ["nightly", "--night", "2026-11-29"]):
        proc = subprocess.run([sys.executable, "-m", "tsmeta.cli", *cmd, "--data-dir", str(tmp_path / "empty")],
                              capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert (
            proc.stderr.startswith(f"tsmeta {cmd[0]}: error:") and "tsmeta generate" in proc.stderr
        )


def test_a_bad_setting_is_named_with_its_variable_and_value(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TSMETA_OWN_HISTORY", "bogus")
    assert main(["anomalies", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "setting own_history (TSMETA_OWN_HISTORY)" in err and "'bogus'" in err


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(
            ["--verbose", "profile", "--data-dir", str(tmp_path / "empty"), "--as-of", "2026-11-29"]
        )


def test_anomalies_on_an_empty_store_says_so(tmp_path, capsys):
    assert main(["anomalies", "--data-dir", str(tmp_path)]) == 0
    assert "no anomalies stored yet" in capsys.readouterr().err
    assert not (tmp_path / "tsmeta.db").exists()  # a command that reads creates nothing
    assert main(["report", "--data-dir", str(tmp_path)]) == 2
    assert "no database at" in capsys.readouterr().err


def test_demo_runs_the_whole_path(tmp_path, capsys, prefect_harness, ray_local):
    code = main(["demo", "--series", "300", "--data-dir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0, out
    for needle in ("run summary", "top anomalies", "precision", "recall", "status completed"):
        assert needle in out
    # a second run reuses the dataset and replaces the night's rows
    assert main(["demo", "--series", "300", "--data-dir", str(tmp_path / "demo")]) == 0
    assert "reusing it" in capsys.readouterr().out
    assert (
        main(["anomalies", "--data-dir", str(tmp_path / "demo"), "--format", "json", "--top", "3"])
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and rows[0]["score"] >= rows[1]["score"]
    # an export holds every row of the night; the table shows the top 20
    dd = ["--data-dir", str(tmp_path / "demo")]
    assert main(["anomalies", *dd, "--format", "csv"]) == 0
    exported = capsys.readouterr().out.strip().splitlines()[1:]
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'demo' / 'tsmeta.db'}")
    with engine.connect() as conn:
        stored = conn.execute(sa.text(
            "select count(*) from anomalies where ts >= (select max(night) from anomaly_daily_counts)"
        )).scalar()  # fmt: skip
    engine.dispose()
    assert len(exported) == stored > 3
    _plot_report_evaluate(tmp_path / "demo", rows[0]["series_id"], capsys)


def _plot_report_evaluate(data_dir, top_series, capsys):
    """plot, report and evaluate on the demo's state (run from the demo test: one training)."""
    import base64
    import re

    dd = ["--data-dir", str(data_dir)]
    # the demo wrote the night's report; `report` rewrites it, idempotently
    night = "2026-11-29"
    demo_report = data_dir / "reports" / f"report-{night}.html"
    assert demo_report.is_file()
    out = data_dir / "r.html"
    assert main(["report", *dd, "--date", night, "--top", "3", "--out", str(out)]) == 0
    assert "3 series plotted" in capsys.readouterr().out
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for needle in ("Per cluster", "model version", "Top anomalies", top_series, "its band"):
        assert needle in page
    assert "<script" not in page  # self-contained and static

    png = data_dir / "one.png"
    assert main(["plot", top_series, *dd, "--date", night, "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()

    # a night that was not run: the flags are recomputed, the same points the run stored
    from datetime import date
    from unittest import mock

    from tsmeta import explain
    from tsmeta.config import load_settings

    settings = load_settings(data_dir=data_dir)
    (stored,) = explain.series_night(settings, [top_series], date.fromisoformat(night))
    with mock.patch.object(explain, "_night_was_run", return_value=False):
        (again,) = explain.series_night(settings, [top_series], date.fromisoformat(night))
    assert stored.flags_from == "stored" and again.flags_from == "recomputed"
    assert stored.flags.height > 0
    cols = ("ts", "direction", "severity")
    assert again.flags.select(cols).sort("ts").equals(stored.flags.select(cols).sort("ts"))
    # every flagged series, and those whose night-before flags left their support: the
    # night's flags and forecasts as the nightly job made them
    import numpy as np
    import polars as pl

    from tsmeta import jobs
    from tsmeta.jobs.history import NightHistory

    flagged = set(jobs.read_night(settings, date.fromisoformat(night))["series_id"])
    held = set(NightHistory.stored(settings, date.fromisoformat(night)).held["series_id"])
    assert held and flagged
    with mock.patch.object(explain, "_night_was_run", return_value=False):
        recomputed = explain.series_night(settings, sorted(flagged | held),
                                          date.fromisoformat(night))  # fmt: skip
    stored_rows = jobs.read_night(settings, date.fromisoformat(night))
    ((_, every, _),) = jobs.replay(settings, date.fromisoformat(night),
                                   date.fromisoformat(night), "explain-test")  # fmt: skip
    for one in recomputed:
        rows = stored_rows.filter(pl.col("series_id") == one.series_id)
        assert one.flags.select(cols).sort("ts").equals(rows.select(cols).sort("ts")), one.series_id
        band = every.filter(pl.col("series_id") == one.series_id)  # the night's forecasts
        at = np.searchsorted(one.night_ts, band["ts"].dt.replace_time_zone(None).to_numpy())
        assert np.allclose(band["forecast"].to_numpy(), one.forecast[at], rtol=1e-5)

    assert main(["--progress", "evaluate", *dd, "--start", night, "--end", night,
                 "--json", str(data_dir / "ev.json")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "labelled anomalies: precision" in captured.out
    assert "evaluate:" in captured.err and "series/s" in captured.err  # progress bars
    card = json.loads((data_dir / "ev.json").read_text())
    assert card["clusters"][-1]["cluster"] == "all" and card["clusters"][-1]["points"] > 0
    assert 0 <= card["detection"]["precision"] <= 1

    # bad arguments: one line, exit 2
    for argv, needle in (
        (["plot", "no-such-series", *dd, "--date", night], "unknown series id 'no-such-series'"),
        (["plot", top_series, *dd, "--date", "2020-01-01"], "no data for 2020-01-01"),
        (["report", *dd, "--date", "2026-11-02"], "no finished nightly run for 2026-11-02"),
        (["evaluate", *dd, "--start", night, "--end", "2026-11-28"], "empty date range"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_unreachable_database_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TSMETA_DATABASE_URL", "postgresql+psycopg://tsmeta:secret@127.0.0.1:9/none")
    assert main(["anomalies", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "cannot reach postgresql+psycopg://tsmeta:***@127.0.0.1:9/none" in err
    )
    assert "secret" not in err and "TSMETA_DATABASE_URL" in err


def test_plot_draws_the_band_and_each_flag_by_direction():
    from datetime import date

    import numpy as np
    import polars as pl
    from matplotlib.collections import PathCollection, PolyCollection

    from tsmeta.explain import SeriesNight
    from tsmeta.report import draw

    ts = np.datetime64("2026-11-20T00:00", "us") + np.arange(48) * np.timedelta64(3600, "s")
    value = np.sin(np.arange(48) / 4.0)
    flags = pl.DataFrame({"ts": ts[[30, 31, 40]], "value": value[[30, 31, 40]],
                          "direction": ["up", "up", "down"]}).with_columns(
        pl.col("ts").dt.replace_time_zone("UTC"))  # fmt: skip
    view = SeriesNight("s1", "p24-0", 3, date(2026, 11, 21), ts, value, ts[24:], value[24:],
                       value[24:] - 0.2, value[24:] + 0.2, np.full(24, 0.5), "adapted", flags,
                       "stored")  # fmt: skip
    fig = draw(view)
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    marks = {
        c.get_label(): len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)
    }
    assert len(bands) == 1
    assert marks == {"flagged up (2)": 2, "flagged down (1)": 1}
    assert "s1" in ax.get_title(loc="left") and "model v3" in ax.get_title(loc="left")
    # a night that was not scored (stuck recent points) shows no band and says why
    from dataclasses import replace

    ax = draw(replace(view, basis="constant", flags=flags.head(0))).axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert "not scored: the recent points are stuck" in ax.get_title(loc="left")


HOSTILE = [
    "x' OR '1'='1",
    "a; DROP TABLE anomalies; --",
    'p24"); DELETE FROM runs; --',
    "%",
    "' UNION SELECT * FROM runs --",
]


@pytest.fixture
def stored(tmp_path):
    """A database with two nights of anomalies and their profile."""
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from tsmeta import jobs
    from tsmeta.config import load_settings
    from tsmeta.store.writes import replace_night, write_profile

    settings = load_settings(data_dir=tmp_path)
    engine = jobs.engine_for(settings)
    write_profile(engine, pl.DataFrame({"series_id": ["a", "b", HOSTILE[0]], "period": [24, 24, 0],
                                        "strength": [0.9, 0.9, 0.0], "cluster_id": ["p24", "p24", "aperiodic"]}), "r")  # fmt: skip
    for day, scores in ((13, [0.9991, 0.9992]), (14, [0.9999, 0.9995])):
        night = datetime(2026, 11, day, tzinfo=UTC)
        frame = pl.DataFrame({
            "series_id": ["a", "b"], "ts": [night + timedelta(hours=1), night + timedelta(hours=2)],
            "value": [9.0, 1.0], "forecast": [5.0, 5.0], "lower": [4.0, 4.0], "upper": [6.0, 6.0],
            "residual": [4.0, -4.0], "score": scores, "direction": ["up", "down"],
            "cluster_id": ["p24", "p24"], "model_version": [1, 1],
        })  # fmt: skip
        replace_night(engine, frame, night, night + timedelta(days=1), f"run-{day}")
    return tmp_path


def _json_rows(capsys):
    return json.loads(capsys.readouterr().out)


def test_anomalies_filters(stored, capsys):
    base = ["anomalies", "--data-dir", str(stored), "--format", "json"]
    assert main(base) == 0  # default: the latest night
    rows = _json_rows(capsys)
    assert [r["series_id"] for r in rows] == ["a", "b"] and rows[0]["ts"].startswith("2026-11-14")
    assert main([*base, "--start", "2026-11-13", "--end", "2026-11-14"]) == 0
    assert len(_json_rows(capsys)) == 4
    assert main([*base, "--night", "2026-11-13", "--series", "b"]) == 0
    assert [r["score"] for r in _json_rows(capsys)] == [0.9992]
    assert (
        main(
            [
                *base,
                "--start",
                "2026-11-13",
                "--end",
                "2026-11-14",
                "--min-score",
                "0.9995",
                "--top",
                "1",
            ]
        )
        == 0
    )
    assert [r["score"] for r in _json_rows(capsys)] == [0.9999]
    assert (
        main([*base, "--start", "2026-11-13", "--end", "2026-11-14", "--cluster", "aperiodic"]) == 0
    )
    assert _json_rows(capsys) == []
    assert main(["anomalies", "--data-dir", str(stored), "--format", "csv", "--top", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("series_id,ts,value")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_filter_values_are_data(stored, capsys, hostile):
    import sqlalchemy as sa

    from tsmeta import jobs
    from tsmeta.config import load_settings

    base = [
        "anomalies",
        "--data-dir",
        str(stored),
        "--format",
        "json",
        "--start",
        "2026-11-13",
        "--end",
        "2026-11-14",
    ]
    assert main([*base, "--cluster", hostile]) == 0
    assert _json_rows(capsys) == []  # no cluster has that name: nothing matches, nothing runs
    code = main([*base, "--series", hostile])
    if hostile == HOSTILE[0]:  # a real (odd) series id in the profile, with no anomalies
        assert code == 0 and _json_rows(capsys) == []
    else:
        assert code == 2 and "unknown series id" in capsys.readouterr().err
    engine = jobs.engine_for(load_settings(data_dir=stored))
    with engine.connect() as conn:  # everything is still there
        assert conn.execute(sa.text("select count(*) from anomalies")).scalar() == 4


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--start", "2026-11-14", "--end", "2026-11-13"], "empty date range"),
        (["--min-score", "7"], "score in [0, 1]"),
        (["--night", "2026-11-14", "--start", "2026-11-13"], "either --night"),
    ],
)
def test_anomalies_bad_filters(stored, capsys, argv, needle):
    assert main(["anomalies", "--data-dir", str(stored), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_ingest_validates_and_partitions_idempotently(tmp_path, capsys):
    import polars as pl

    from tsmeta.data.io import dataset_dates, read_window

    csv = tmp_path / "metrics.csv"
    lines = ["series_id,ts,value"] + [
        f"host-{s},2026-11-{1 + h // 24:02d}T{h % 24:02d}:00:00,{s * 10 + h % 24}"
        for s in range(3)
        for h in range(72)
    ]
    csv.write_text("\n".join(lines) + "\n")
    dd = ["--data-dir", str(tmp_path / "state")]
    for _ in range(2):  # re-ingesting the same file replaces its part, never duplicates
        assert main(["ingest", str(csv), *dd]) == 0
        assert "ingested 216 points of 3 series" in capsys.readouterr().out
    ds = tmp_path / "state" / "dataset"
    assert [str(d) for d in dataset_dates(ds)] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    frame = read_window(ds, "2026-11-01", "2026-11-04")
    assert (
        frame.height == 216 and frame.filter(pl.col("series_id") == "host-2")["value"].max() == 43
    )

    # the same points under another file name: refused, naming the file that has them,
    # and nothing of the new file is written
    copy = tmp_path / "metrics-copy.csv"
    copy.write_text(csv.read_text())
    assert main(["ingest", str(copy), *dd]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "216 points" in err, err
    assert "date=2026-11-01/ingest-metrics.parquet (72)" in err and "--part" in err
    assert not list(ds.glob("date=*/ingest-metrics-copy.parquet"))
    assert main(["ingest", str(copy), "--part", "ingest-metrics", *dd]) == 0  # replaces it
    assert read_window(ds, "2026-11-01", "2026-11-04").height == 216

    bad = tmp_path / "bad.csv"
    bad.write_text("id,ts,value\nx,2026-11-01T00:00:00,1\n")
    dupes = tmp_path / "dupes.csv"
    dupes.write_text("series_id,ts,value\nx,2026-11-01T00:00:00,1\nx,2026-11-01T00:00:00,2\n")
    for argv, needle in (
        (["ingest", str(bad), *dd], "series_id"),
        (["ingest", str(dupes), *dd], "--aggregate"),
        (["ingest", str(tmp_path / "metrics.txt"), *dd], "does not exist"),
        (["ingest", str(csv.with_suffix(".json")), *dd], "does not exist"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err
    txt = tmp_path / "m.txt"
    txt.write_text("x")
    assert main(["ingest", str(txt), *dd]) == 2
    assert "give a .csv or .parquet file" in capsys.readouterr().err


def test_ingest_puts_irregular_timestamps_on_the_grid(tmp_path, capsys):
    from tsmeta.data.io import read_window

    csv = tmp_path / "irregular.csv"
    csv.write_text("series_id,ts,value\n" "x,2026-11-01T00:00:00,1\n" "x,2026-11-01T00:04:59,3\n"
                   "x,2026-11-01T00:07:00,5\n" "x,2026-11-01T00:20:00,7\n"
                   "x,2026-11-01T00:20:00,9\n")  # fmt: skip
    dd = ["--data-dir", str(tmp_path / "state"), "--freq", "5m"]
    assert main(["ingest", str(csv), *dd]) == 2  # the same timestamp twice: no rule asked
    assert "--aggregate" in capsys.readouterr().err
    assert main(["ingest", str(csv), "--aggregate", "max", *dd]) == 0
    out = capsys.readouterr().out
    assert "2 moved to the start of their step, 2 combined into another (max)" in out, out
    assert "2 steps between a series' first and last point have no point" in out
    got = read_window(tmp_path / "state" / "dataset", "2026-11-01", "2026-11-02", "5min")
    assert got["value"].to_list() == [3.0, 5.0, 9.0]
    assert got["ts"].dt.minute().to_list() == [0, 5, 20]
    # one dataset, one step: the dataset records 5min, and hourly work on it is refused
    dd_hourly = ["--data-dir", str(tmp_path / "state"), "--freq", "h"]
    for argv in (["ingest", str(csv), "--aggregate", "max", *dd_hourly],
                 ["profile", "--as-of", "2026-11-02", *dd_hourly]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "holds 5min data, and the step asked for is h: pass --freq 5min" in err, err
    with pytest.raises(ValueError, match="holds 5min data"):
        read_window(tmp_path / "state" / "dataset", "2026-11-01", "2026-11-02", "h")
    # no step asked for: the dataset's own (re-ingesting the same file replaces it)
    assert (
        main(["ingest", str(csv), "--aggregate", "max", "--data-dir", str(tmp_path / "state")]) == 0
    )
    assert "on the 5min grid" in capsys.readouterr().out
    # a new dataset takes the step asked for (default hourly), not the data folder's
    from tsmeta.data.dataset_step import dataset_freq

    other = tmp_path / "other"
    assert main(["generate", "--series", "2", "--days", "1", "--out", str(other), "--data-dir",
                 str(tmp_path / "state")]) == 0  # fmt: skip
    assert dataset_freq(other) == "h"


def test_evaluate_runs_a_benchmark_with_its_own_arguments(tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = ["evaluate", "--benchmark", "throughput", "--", "--series", "256", "--loop-series", "4",
            "--devices", "cpu", "--min-seconds", "0.1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "score_day" in capsys.readouterr().out
    assert {r["method"] for r in json.loads(out.read_text())["rows"]} >= {"score_day"}
    assert main(["evaluate", "--benchmark", "throughput", "--", "--no-such-option"]) == 2
