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
        (["generate", "--freq", "weekly"], "invalid choice"),
        (["nightly", "--night", "2026-13-01"], "expected YYYY-MM-DD"),
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


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(
            ["--verbose", "profile", "--data-dir", str(tmp_path / "empty"), "--as-of", "2026-11-29"]
        )


def test_anomalies_on_an_empty_store_says_so(tmp_path, capsys):
    assert main(["anomalies", "--data-dir", str(tmp_path)]) == 0
    assert "no anomalies stored yet" in capsys.readouterr().err


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
