"""Each benchmark script runs in its smallest mode and writes a JSON of its figures."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args, "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "a benchmark prints its table"
    return json.loads(out.read_text())


def test_sine_quick(tmp_path):
    res = run(
        "sine", "--quick", "--algorithms", "maml,pretrain", "--train-k", "10", tmp_path=tmp_path
    )
    runs = res["runs"]
    assert {r["algorithm"] for r in runs} == {"maml", "pretrain"}
    assert {r["eval_k"] for r in runs} == {5, 10, 20}
    for r in runs:
        for steps in ("1", "5", "10"):
            assert r["mse"][steps]["mse"] > 0 and r["mse"][steps]["ci95"] > 0


def test_adapt_throughput_small(tmp_path):
    res = run("adapt_throughput", "--series", "512", "--loop-series", "8", "--min-seconds", "0.2",
              tmp_path=tmp_path)  # fmt: skip
    methods = {r["method"] for r in res["rows"]}
    assert {"batched explicit", "batched anil", "batched vmap", "per-series loop", "score_day",
            "score_day, anil"} <= methods  # fmt: skip
    assert all(r["series_per_s"] > 0 for r in res["rows"])


@pytest.mark.parametrize("freq", ["h", "d"])
def test_generate_small(tmp_path, freq):
    res = run("generate", "--series", "100", "--days", "3", "--freq", freq, tmp_path=tmp_path)
    assert res["rows"] > 0 and res["series"] == 100


def test_periodicity_small(tmp_path):
    res = run("periodicity", "--series", "70000", "--per-level", "100", "--freqs", "h,5min",
              tmp_path=tmp_path)  # fmt: skip
    clean = [r for r in res["accuracy"] if r["truth"] in (24, 288, 2016) and r["noise_sd"] <= 0.5]
    assert len(clean) == 6 and all(r["tsmeta"] >= 0.95 for r in clean)
    assert res["throughput"]["tsmeta_series_per_s"] > 0


def test_profile_scale_small(tmp_path, pg_url):
    res = run("profile_scale", "--series", "300", "--days", "3", "--work", str(tmp_path / "w"),
              "--pg-url", pg_url, tmp_path=tmp_path)  # fmt: skip
    runs = {(r["database"], r["run"].split()[0]): r for r in res["runs"]}
    assert set(runs) == {(d, k) for d in ("sqlite", "postgresql") for k in ("first", "next")}
    for r in runs.values():
        assert r["series"] == 300 and r["seconds"] > 0 and r["peak_rss_gib"] > 0
    assert (
        runs["sqlite", "first"]["fitted_periods"] and not runs["sqlite", "next"]["fitted_periods"]
    )


@pytest.mark.slow  # about 100 s on 2 cores (two frequencies, both databases, three peers)
def test_nightly_scale_small(tmp_path, pg_url):
    res = run("nightly_scale", "--series", "400", "--freqs", "h,d", "--sample", "4",
              "--work", str(tmp_path / "w"), "--pg-url", pg_url, tmp_path=tmp_path)  # fmt: skip
    assert [r["freq"] for r in res["runs"]] == ["h", "d"]
    for r in res["runs"]:
        assert set(r["nightly"]) == {"postgresql", "sqlite"}
        pg, lite = r["nightly"]["postgresql"], r["nightly"]["sqlite"]
        assert pg["series"] == lite["series"] == 400
        assert pg["scored"] == lite["scored"] > 0.95 * 400  # the rest: too few or stuck points
        assert pg["written"] == lite["written"] == pg["flagged"]  # same models, same rows
        for name in ("AutoETS", "MSTL", "seasonal naive + MAD"):
            assert r["peers"][name]["cpu_s_per_series"] > 0


M4 = ROOT.parent / "shared" / "data" / "m4"


@pytest.mark.skipif(not (M4 / "Hourly-train.csv").is_file(), reason="M4 data not next to the repo")
def test_m4_hourly_small(tmp_path):
    res = run("m4_hourly", "--limit", "40", "--k", "24", "--meta-steps", "20", "--no-statsforecast",
              tmp_path=tmp_path)  # fmt: skip
    methods = {r["method"] for r in res["rows"]}
    assert {
        "seasonal naive",
        "maml, per period",
        "anil, per period",
        "ridge, per period",
        "pretrain + fine-tune",
    } <= methods
    assert all(r["smape"] > 0 and r["mase"] > 0 for r in res["rows"])


def test_detection_small(tmp_path):
    res = run("detection", "--series", "120", "--nights", "1", "--mstl-series", "20",
              "--meta-steps", "20", "--skip-m4", tmp_path=tmp_path)  # fmt: skip
    syn = res["synthetic"]
    assert set(syn["mstl_sample"]) == {"tsmeta", "tsmeta, own history", "tsmeta, points only",
                                       "tsmeta, 1024 tasks",
                                       "tsmeta, 1024 tasks, no veto",
                                       "tsmeta, 1024 tasks, no isolation",
                                       "tsmeta, 1024 tasks, no trim",
                                       "tsmeta, 1024 tasks, no onset",
                                       "tsmeta, 1024 tasks, level veto",
                                       "unadapted init",
                                       "seasonal naive + robust z", "MSTL interval"}  # fmt: skip
    for r in syn["all_series"].values():
        assert 0 <= r["pr_auc"] <= 1 and r["events"] > 0
    assert all(0 <= v < 1 for v in syn["clean_flag_rate"].values())


def test_families_small(tmp_path):
    # the heavy family is the default family's generator with t noise: it stands for both
    res = run("families", "--series", "80", "--weeks", "5", "--families", "business", "heavy",
              tmp_path=tmp_path)  # fmt: skip
    assert set(res["families"]) == {"business", "heavy"}
    for fam in res["families"].values():
        assert fam["nights"] == 14 and fam["events"] > 0
        assert set(fam["methods"]) == {"tsmeta", "seasonal naive + MAD", "3-week median + MAD",
                                       "matrix profile (STUMPY)"}  # fmt: skip
        for m in fam["methods"].values():
            assert 0 <= m["f1_at_rate"] <= m["best_f1"] + 1e-9 <= 1
            assert 0 <= m["clean_rate"] <= m["worst_cell_rate"] <= 1
            assert m["clean_rate"] <= m["worst_weekday_rate"] + 1e-12 <= 1 + 1e-12
    business = res["families"]["business"]["methods"]["tsmeta"]
    assert 0 <= business["holiday_rate"] <= 1 and 0 <= business["after_holiday_rate"] <= 1
    assert business["after_holiday_rate"] <= business["after_holiday_worst_night"] <= 1
    # the shared holiday is recorded as events holding most of its flags, no clean flag is one
    assert business["shared_events"] >= 1 and business["holiday_flags_in_events"] > 0.5
    assert res["families"]["heavy"]["methods"]["tsmeta"]["clean_flags_in_events"] < 0.05


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "nab" / "run.py").is_file(),
                    reason="NAB not next to the repo")  # fmt: skip
def test_nab_small(tmp_path):
    """Two labelled 5-minute streams through the whole NAB path: models meta-trained on a
    generated corpus, each night scored causally, NAB's own scorer run on a copy."""
    streams = "artificialWithAnomaly/art_daily_jumpsup.csv,realKnownCause/ec2_request_latency_system_failure.csv"
    res = run("nab", "--only", streams, "--train-series", "150", "--meta-steps", "40",
              tmp_path=tmp_path)  # fmt: skip
    assert set(res["scores"]) == {"tsmeta", "tsmetaFlags", "tsmetaCluster"}
    for profiles in res["scores"].values():
        assert set(profiles) == {"standard", "reward_low_FP_rate", "reward_low_FN_rate"}
        assert all(-1000 < v <= 100 for v in profiles.values())
    assert set(res["streams"]) == set(streams.split(","))
    for info in res["streams"].values():
        assert info["freq"] == "5min" and info["points"] > 3000 and info["cluster"]
        # the product's flags (the cluster's tails alone, a diagnostic row, flag more)
        assert 0 < info["flagged_nightly"] <= info["flagged_points"] < info["points"] / 5
        assert info["flagged_nightly"] < info["points"] / 20
        assert 0 < info["alerts"] < info["flagged_nightly"]
    assert res["scoreboard"]["windowedGaussian"]["standard"] == pytest.approx(39.65, abs=0.01)


def _peers():  # noqa: ANN202 - benchmarks/peers.py, loaded from its file (no package)
    import importlib.util

    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_families_mstl_peer_scores_each_week_from_the_weeks_before():
    """The MSTL peer: a point far off its seasons gets a large |z|, ordinary points small;
    nothing before ``first`` is scored and a week is forecast from the 3 weeks before it."""
    peers = _peers()
    rng = np.random.default_rng(0)
    t = np.arange(5 * 168)
    base = 100 + 20 * np.sin(2 * np.pi * t / 24) + 10 * (t % 168 >= 120)
    values = base + rng.normal(0, 1, (3, len(t)))
    values[1, 4 * 168 + 30] += 40  # a spike in the second scored week
    values[2, 3 * 168 + 5 : 3 * 168 + 7] = np.nan  # gaps are filled forward for the fit
    z = peers.mstl_z(values, 3 * 168)
    assert z.shape == (3, 2 * 168)
    assert z[1, 168 + 30] > 8 and np.nanmedian(z) < 1.5
    assert np.isnan(z[2, 5:7]).all() and np.isfinite(z[0]).all()


def test_families_matrix_profile_peer_scores_a_day_against_earlier_days():
    """The library peer (STUMPY's left matrix profile): the day ending at a spike is far from
    every earlier day, ordinary days are not; gaps are filled, nothing before ``first``."""
    peers = _peers()
    rng = np.random.default_rng(0)
    t = np.arange(5 * 168)
    values = 100 + 20 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, (3, len(t)))
    values[1, 4 * 168 + 30] += 40
    values[2, 3 * 168 + 5 : 3 * 168 + 7] = np.nan
    values[0, :3] = np.nan
    z = peers.discord_z(values, 3 * 168)
    assert z.shape == (3, 2 * 168) and np.isfinite(z).all() and (z >= 0).all()
    assert z[1, 168 + 30] > 10 and z[1, 168 + 29] < 3  # the spike, not the hour before it
    assert np.median(z) < 0.5
