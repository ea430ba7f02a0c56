"""The Numenta Anomaly Benchmark, scored by NAB's own scorer.

For each frequency among the streams (5 minutes, 10 minutes, 30 minutes, an hour):

1. **Models, without labels and without the streams.** A generated corpus of the same
   frequency (``tsmeta generate``'s default family, ``--train-series`` series over 35 days)
   is profiled and meta-trained through ``tsmeta.jobs`` (real Ray), one model per cluster,
   as ``tsmeta profile`` and ``tsmeta train`` do. NAB's streams are too short to train on:
   their probationary 15% is at most 750 points (2.6 days at 5 minutes).
2. **Each stream, as ingested.** Its rows go on the frequency's grid with
   ``schema.on_grid`` (mean of the rows in a step; the counts are reported). Its period is
   detected on its probationary part alone (candidates: a day and a week), and it is
   scored with the model of that period's cluster (aperiodic where none is found).
3. **Every night replayed causally.** Each UTC day of the stream is scored as the nightly
   job scores a night (``score_day``, ``causal=True``: no point reads a later one), from
   the K points before it; days before the stream's start are missing, as they are for a
   new series. Each point gets two tail probabilities: the cluster's alone (calibrated on
   the training corpus) and the nightly job's (``tsmeta.jobs.history.NightHistory``, carried
   from night to night as a replay carries it: the larger of the cluster's tail and the
   point's tail against the stream's own residuals on earlier nights; the points flagged
   the night before are left out of the next night's support, as the nightly job does).
4. **Three detectors from them**, each written as NAB result files: ``tsmeta`` (the
   nightly job's alerts, its ``alert`` column: a flagged point more surprising than any
   point of the stream since the start of the night before, so a run of anomalies is
   reported once, at its start), ``tsmetaFlags`` (the nightly job's tails at every point)
   and ``tsmetaCluster`` (the cluster's tails alone, every point). A row's
   ``anomaly_score`` is that of its step: ``s / (s + 3)`` of the surprise ``s = -log10 p``
   (0.5 at the configured rate 1e-3; monotone, so NAB's threshold sweep sees tsmeta's
   ranking); points not scored (the first day, gaps) and points a detector passes over
   get 0.
5. NAB's scorer runs on a temporary copy of ``../shared/data/nab`` (``--optimize --score
   --normalize``) and the three profiles' final scores of each are printed beside the scoreboard.

``--streams N`` scores the first N streams in NAB's order (the test suite runs 2); the
scorer then runs on those streams alone (its score is not comparable to the scoreboard).
``--json PATH`` writes the table and per-stream details.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from tsmeta import jobs
from tsmeta.clustering import period_of_cluster
from tsmeta.config import load_settings
from tsmeta.data.panel import Panel, build_panel
from tsmeta.data.schema import on_grid
from tsmeta.data.synthetic import write_synthetic_dataset
from tsmeta.detect import score_day, surprise_of
from tsmeta.frequency import (
    SUPPORTED_STEPS,
    freq_minutes,
    normalise_freq,
    polars_every,
    steps_per_day,
)
from tsmeta.jobs.history import NightHistory
from tsmeta.meta.calibrate import CALIBRATION_PARTS
from tsmeta.meta.tasks import window_reach
from tsmeta.periodicity import detect_periods
from tsmeta.store.models import load_latest_models

NAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
TRAIN_START = date(2026, 9, 7)  # the generated corpus's first day (a Monday)
TRAIN_DAYS = 35
_POINTWISE = ("value", "observed", "forecast", "lower", "upper", "residual", "tail", "flag")


def stream_frequency(ts: pl.Series) -> str:
    """The supported step nearest the median spacing of a stream's timestamps."""
    gap = float(ts.sort().diff().dt.total_seconds().drop_nulls().median()) / 60
    return normalise_freq(f"{min(SUPPORTED_STEPS, key=lambda m: abs(m - gap))}min")


def list_streams(nab: Path) -> list[tuple[str, Path]]:
    """(category/file, path) of every data file, in NAB's order."""
    files = sorted((nab / "data").glob("*/*.csv"))
    return [(f"{p.parent.name}/{p.name}", p) for p in files]


def train_models(
    freq: str,
    work: Path,
    n_series: int,
    seed: int,
    meta_steps: int | None = None,
    ablate: dict | None = None,
) -> tuple[object, dict]:
    """Profile and meta-train on a generated corpus of ``freq``; (settings, models).
    ``ablate``: ``MetaConfig`` overrides (the ablation: a part left out)."""
    settings = load_settings(data_dir=work / freq, freq=freq, seed=seed, causal=True)
    done = work / freq / "trained.json"
    key = [n_series, seed, meta_steps, "causal", *([ablate] if ablate else [])]
    if done.is_file() and json.loads(done.read_text()) == key:
        return settings, load_latest_models(jobs.engine_for(settings), settings.model_dir)
    write_synthetic_dataset(settings.dataset_path, n_series, freq, TRAIN_DAYS, TRAIN_START, seed)
    as_of = TRAIN_START + timedelta(days=TRAIN_DAYS)
    jobs.profile_series(settings, as_of, "nab")
    trained = jobs.train_models(settings, as_of, "nab", meta_steps=meta_steps, **(ablate or {}))
    failed = {c: r["error"] for c, r in trained.items() if "error" in r}
    if failed:
        raise RuntimeError(f"training failed at {freq}: {failed}")
    models = load_latest_models(jobs.engine_for(settings), settings.model_dir)
    done.write_text(json.dumps(key))  # --work reuses them
    return settings, models


def pick_model(models: dict, period: int) -> str:
    """The cluster of the stream's period (its first shape cluster); aperiodic otherwise."""
    for wanted in (period, 0):
        ids = sorted(c for c in models if period_of_cluster(c) == wanted)
        if ids:
            return ids[0]
    return sorted(models)[0]


DETECTORS = {  # NAB detector name: (tail, points scored, what it is)
    "tsmeta": ("product", "alerts", "the nightly job's alerts"),
    "tsmetaFlags": ("product", "every", "the nightly job's tails, every point"),
    "tsmetaCluster": ("cluster", "every", "cluster tails alone, every point"),
}


def stream_scores(tails: dict[str, np.ndarray], alerts: np.ndarray) -> dict[str, np.ndarray]:
    """Each detector's per-step anomaly score from the cluster's and the nightly tails and
    the nightly job's alerts."""
    out = {}
    for det, (kind, points, _) in DETECTORS.items():
        s = surprise_of(tails[kind])
        if points == "alerts":
            s = np.where(alerts, s, 0.0)
        out[det] = np.nan_to_num(s / (s + 3.0), nan=0.0)
    return out


def score_stream(
    raw: pl.DataFrame,
    freq: str,
    settings,  # noqa: ANN001
    models: dict,
    recut: int | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Causal anomaly scores of a stream's rows (in file order), per detector, and what
    was done."""
    frame = raw.select(
        pl.lit("stream").alias("series_id"),
        pl.col("timestamp").str.to_datetime().alias("ts"),
        pl.col("value").cast(pl.Float64),
    )
    grid, report = on_grid(frame, freq, "mean")
    spd = steps_per_day(freq)
    first_day = grid["ts"].min().date()
    last_day = grid["ts"].max().date()
    # room before the first day for everything a model reads (missing there: a new series)
    reach_days = max(math.ceil(window_reach(m.spec, m.config.k, m.config.horizon) / spd)
                     for _, m in models.values())  # fmt: skip
    begin = datetime.combine(first_day - timedelta(days=reach_days), datetime.min.time())
    end = datetime.combine(last_day + timedelta(days=2), datetime.min.time())  # a day to spare
    panel = build_panel(grid, freq, begin, end)
    values, mask = panel.values, panel.mask
    # the period, from the probationary part alone (NAB: the first 15%, at most 750 rows)
    probation = min(750, int(0.15 * raw.height))
    lead = reach_days * spd
    obs_cols = np.flatnonzero(mask[0])
    cut = obs_cols[min(probation, len(obs_cols)) - 1] + 1
    res = detect_periods(values[:, lead:cut], mask[:, lead:cut], settings.candidate_periods,
                         settings.min_acf)  # fmt: skip
    cid = pick_model(models, int(res.period[0]))
    _, model = models[cid]
    tails = {k: np.full(values.shape[1], np.nan) for k in ("cluster", "product")}
    alerts = np.zeros(values.shape[1], dtype=bool)
    # causal: no own jumps (they read the next point)
    history = NightHistory(clip=settings.history_clip, hold=settings.hold_flagged,
                           jumps=not settings.causal)  # fmt: skip
    every = recut or spd
    reach = window_reach(model.spec, model.config.k, spd)
    for c in range(reach_days * spd, values.shape[1] - spd, every):
        lo = max(0, c - reach)
        window = Panel(values[:, lo : c + spd], mask[:, lo : c + spd], panel.series_ids,
                       panel.start, freq)  # fmt: skip
        if every == spd:  # the night before's flags leave the support, as the nightly job's
            window = history.without_held(window, spd)
        day = score_day(window.values, window.mask, panel.series_ids, panel.start_step + lo,
                        model, settings.false_alarm_rate, causal=True)  # fmt: skip
        if every < spd:  # the points up to the next origin only
            day = replace(day, **{f: getattr(day, f)[:, :every] for f in _POINTWISE})
        tails["cluster"][c : c + every] = day.tail[0]
        nightly = history.apply(day, settings.false_alarm_rate)
        tails["product"][c : c + every], alerts[c : c + every] = nightly.tail[0], nightly.alert[0]
        history = history.next()
    # each row takes its step's score
    step = ((frame["ts"].dt.truncate(polars_every(freq)) - begin).dt.total_minutes()
            // freq_minutes(freq)).to_numpy()  # fmt: skip
    scores = {det: s[step] for det, s in stream_scores(tails, alerts).items()}
    return scores, {"cluster": cid, "period": int(res.period[0]), **report,
                    "flagged_points": int((tails["cluster"] < settings.false_alarm_rate).sum()),
                    "flagged_nightly": int((tails["product"] < settings.false_alarm_rate).sum()),
                    "alerts": int(alerts.sum())}  # fmt: skip


def run_scorer(nab_copy: Path) -> dict[str, dict[str, float]]:
    """NAB's scorer on ``nab_copy`` for every tsmeta detector: {detector: {profile: score}}."""
    env = {**os.environ, "PYTHONPATH": str(nab_copy)}
    for det in DETECTORS:
        subprocess.run([sys.executable, "scripts/create_new_detector.py", "--detector", det],
                       cwd=nab_copy, env=env, check=True, capture_output=True)  # fmt: skip
    proc = subprocess.run([sys.executable, "run.py", "-d", ",".join(DETECTORS), "--optimize",
                           "--score", "--normalize", "--skipConfirmation"],
                          cwd=nab_copy, env=env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"NAB's scorer failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    found = re.findall(
        r"Final score for '(\w+)' detector on '(\w+)' profile = ([-\d.]+)", proc.stdout
    )
    final: dict[str, dict[str, float]] = {}
    for det, profile, score in found:
        if det in DETECTORS:
            final.setdefault(det, {})[profile] = float(score)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nab", type=Path, default=NAB, help="NAB's folder (read only; copied)")
    ap.add_argument("--streams", type=int, default=None, help="the first N streams only")
    ap.add_argument(
        "--only", default=None, help="these streams only, comma-separated category/file.csv names"
    )
    ap.add_argument(
        "--meta-steps",
        type=int,
        default=None,
        help="outer steps per cluster (default: the settings'; fewer in the tests)",
    )
    ap.add_argument("--train-series", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--work", type=Path, default=None, help="working folder (default: a temporary one)"
    )
    ap.add_argument("--recut-hours", type=float, default=None,
                    help="move the forecast origin every this many hours (default: once a day, "
                         "as the nightly job)")  # fmt: skip
    ap.add_argument("--without", nargs="*", default=[], choices=[*CALIBRATION_PARTS, "trim"],
                    help="calibration parts left out of the models (the ablation; `trim`: the "
                         "ridge head's refit without support outliers)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.without if p != "trim")
    ablate = {**({"without": parts} if parts else {}),
              **({"trim": float("inf")} if "trim" in args.without else {})}  # fmt: skip
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="tsmeta-nab-")) if args.work is None else args.work
    nab_copy = tmp / "nab"
    shutil.rmtree(nab_copy, ignore_errors=True)
    shutil.copytree(args.nab, nab_copy, ignore=shutil.ignore_patterns("results"))
    (nab_copy / "results").mkdir()
    shutil.copytree(args.nab / "results" / "null", nab_copy / "results" / "null")
    shutil.copy(args.nab / "results" / "final_results.json", nab_copy / "results")
    streams = list_streams(nab_copy)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {n for n, _ in streams})
        if unknown:
            raise SystemExit(f"--only: no such stream(s) {unknown}; names are category/file.csv")
        streams = [(n, p) for n, p in streams if n in wanted]
    if args.streams or args.only:
        streams = streams[: args.streams] if args.streams else streams
        keep = {n for n, _ in streams}
        for _, p in list_streams(nab_copy):  # the scorer scores every data file it finds
            if f"{p.parent.name}/{p.name}" not in keep:
                p.unlink()
        for labels in (nab_copy / "labels").glob("*.json"):  # and expects labels of those only
            windows = json.loads(labels.read_text())
            labels.write_text(json.dumps({k: v for k, v in windows.items() if k in keep}))
    raws = {name: pl.read_csv(path) for name, path in streams}
    freqs = {
        name: stream_frequency(raw["timestamp"].str.to_datetime()) for name, raw in raws.items()
    }
    trained, details = {}, {}
    t_train = time.perf_counter()
    for freq in sorted(set(freqs.values()), key=steps_per_day, reverse=True):
        trained[freq] = train_models(freq, tmp / "work", args.train_series, args.seed,
                                     args.meta_steps, ablate)  # fmt: skip
    t_train = time.perf_counter() - t_train
    t_score = time.perf_counter()
    for name, raw in raws.items():
        settings, models = trained[freqs[name]]
        spd = steps_per_day(freqs[name])
        recut = max(1, round(args.recut_hours * spd / 24)) if args.recut_hours else None
        scores, info = score_stream(raw, freqs[name], settings, models, recut)
        details[name] = {"freq": freqs[name], "rows": raw.height, **info}
        category, file = name.split("/")
        for det, score in scores.items():
            out = nab_copy / "results" / det / category / f"{det}_{file}"
            out.parent.mkdir(parents=True, exist_ok=True)
            raw.select("timestamp", "value").with_columns(
                pl.Series("anomaly_score", np.round(score, 6)), pl.lit(0).alias("label")
            ).write_csv(out)
    t_score = time.perf_counter() - t_score
    t_nab = time.perf_counter()
    final = run_scorer(nab_copy)
    t_nab = time.perf_counter() - t_nab
    board = json.loads((args.nab / "results" / "final_results.json").read_text())

    print(f"\nNAB ({len(streams)} of 58 streams; frequencies "
          f"{dict(sorted(pl.Series(list(freqs.values())).value_counts().iter_rows()))}): "
          f"final scores by NAB's scorer\n")  # fmt: skip
    print(f"{'detector':<46}{'standard':>10}{'low FP':>10}{'low FN':>10}")
    for det, (_, _, meaning) in DETECTORS.items():
        mine = final.get(det, {})
        print(f"{det + ': ' + meaning:<46}"
              + "".join(f"{mine.get(p, float('nan')):>10.2f}" for p in PROFILES))  # fmt: skip
    rows = sorted(board.items(), key=lambda kv: -kv[1]["standard"])
    for det, sc in rows:
        print(f"{det + ' (scoreboard)':<46}" + "".join(f"{sc[p]:>10.2f}" for p in PROFILES))
    flagged = sum(d["flagged_points"] for d in details.values())
    flagged_nightly = sum(d["flagged_nightly"] for d in details.values())
    alerts = sum(d["alerts"] for d in details.values())
    moved = sum(d["moved"] for d in details.values())
    combined = sum(d["combined"] for d in details.values())
    empty = sum(d["empty_steps"] for d in details.values())
    clusters = (
        pl.Series([d["cluster"] for d in details.values()])
        .value_counts()
        .sort("count", descending=True)
    )
    print(f"\nrows put on the grid: {moved} moved, {combined} combined, {empty} empty steps; "
          f"points flagged at the configured rate: {flagged} by the cluster's tails alone, "
          f"{flagged_nightly} by the nightly tails, {alerts} of them alerts; models used: "
          f"{dict(clusters.iter_rows())}")  # fmt: skip
    print(f"seconds: train {t_train:.0f} (generated corpora, Ray), score {t_score:.0f}, "
          f"NAB's scorer {t_nab:.0f}, total {time.perf_counter() - t_all:.0f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"scores": final, "scoreboard": board, "streams": details,
                                         "seconds": {"train": t_train, "score": t_score, "nab": t_nab}},
                                        indent=2, default=str))  # fmt: skip
    if args.work is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if final.get("tsmeta") else 1


if __name__ == "__main__":
    sys.exit(main())
