import json

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


def test_runtime_errors_are_one_line_with_exit_2(tmp_path, capsys):
    code = main(["anomalies", "--data-dir", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.count("\n") == 1
        and err.startswith("tsmeta anomalies: error:")
        and "tsmeta generate" in err
    )


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--verbose", "anomalies", "--data-dir", str(tmp_path / "empty")])


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
