"""Detection quality on labelled anomalies: tsmeta against the detectors users would pick.

Two corpora, each scored by every method on the same points:

(a) the generator's corpus (``tsmeta.data.synthetic``): N hourly series, 28 days to
    profile and meta-train on (one model per detected period, as the product does), then
    ``--nights`` nights scored one at a time, as the nightly job scores them; every
    anomaly kind is reported separately;
(b) M4 Hourly: one model meta-trained on the training parts (horizon 48, K = 48 or
    ``--m4-k``), the 48
    test hours scored after labelled anomalies (spikes, dips, level shifts, sized in units
    of each series' own seasonal-difference spread) are injected into half the series.

Methods: ``tsmeta`` (K-shot adapted meta-model, calibrated tail: each point's own, its
windows', its isolation's and its onset's, then the seasonal-naive veto); ``tsmeta, own
history`` (the nightly job's default: a point also rare against its series' residuals on the
7 horizons scored before, ``tsmeta.jobs.history``); ``unadapted init`` (the
same meta-model without adaptation, its tail re-fitted for 0 steps); ``seasonal naive +
robust z`` (the value one period back, z from the median/MAD of the last 7 days'
seasonal differences); ``MSTL interval`` (statsforecast MSTL, season 24, fit on the
history before each night; its 95% interval gives the residual scale). All flag at the
configured false-alarm rate: a point is flagged when its two-sided tail probability is
below it.

Reported per method: event-level precision, recall and F1 at that rate (a detection is a
run of consecutive flagged points; it is a true positive when it touches a labelled
anomaly), PR-AUC (average precision of the point scores against the labelled points,
ties broken against the method), recall and PR-AUC per kind, and the flag rate on
anomaly-free data (a clean corpus from the generator; the untouched M4 test hours) next
to the configured rate.

    python benchmarks/detection.py --json detection.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tsmeta.config import Settings
from tsmeta.data.panel import steps_since_epoch
from tsmeta.data.synthetic import ANOMALY_KINDS, generate_blocks
from tsmeta.detect import score_day
from tsmeta.evaluation import event_scores, pr_auc
from tsmeta.forecaster import FeatureSpec
from tsmeta.jobs.history import NightHistory
from tsmeta.meta import ALGORITHMS
from tsmeta.meta.calibrate import CALIBRATION_PARTS, calibrate
from tsmeta.meta.tasks import sample_tasks, window_reach
from tsmeta.meta.train import MetaConfig, MetaModel, meta_train
from tsmeta.periodicity import detect_periods

TRAIN_DAYS = 28
# "tsmeta": the model as trained (its tails fitted on held-out series);
# "points only": its tails without the window statistics (each point judged alone); the
# "1024 tasks" rows recalibrate the same model on one larger sample of tasks from the
# training window (the ablation): "1024 tasks" with every part, "no veto", "no isolation", "no onset", "no trim" (the ridge head adapted without leaving
# out its support outliers), "level veto" (the veto's deviations not measured against
# their neighbours'); on M4 every calibration part by its name, "no empirical" the point
# tail without the sample's own far tail as knots (the Student-t alone)
METHODS = ("tsmeta", "tsmeta, own history", "tsmeta, points only", "tsmeta, 1024 tasks",
           "tsmeta, 1024 tasks, no veto", "tsmeta, 1024 tasks, no isolation",
           "tsmeta, 1024 tasks, no trim", "tsmeta, 1024 tasks, no onset", "tsmeta, 1024 tasks, level veto",
           "unadapted init", "seasonal naive + robust z", "MSTL interval")  # fmt: skip


OWN_HISTORY = 7  # horizons scored before each one to build the series' residual history
# rows scored with that history too, as the nightly job scores (the ablation's rows)
ABLATED = ("tsmeta, points only", "tsmeta, 1024 tasks")


def normal_log_tail(z: np.ndarray) -> np.ndarray:
    """log of the two-sided normal tail P(|N| > z)."""
    from scipy.special import log_ndtr

    return math.log(2) + log_ndtr(-np.abs(z))


def unadapted(model: MetaModel, values: np.ndarray, mask: np.ndarray, start_step: int) -> MetaModel:
    """The model without adaptation, its residual tail re-fitted for 0 steps."""
    cfg = MetaConfig(**{**model.config.__dict__, "inner_steps": 0})
    g = torch.Generator().manual_seed(1)
    batch = sample_tasks(torch.as_tensor(values), torch.as_tensor(mask), 1024, model.spec,
                         cfg.k, cfg.horizon, start_step, g, cfg.cut_every)  # fmt: skip
    tail = calibrate(model.params, batch, 0, model.rates)
    return MetaModel(model.params, model.spec, cfg, tail, model.metrics, model.inner_rates)


def points_only(model: MetaModel) -> MetaModel:
    """The same model, its tails without the window statistics (each point judged alone)."""
    part = model.partial_calibration
    return replace(model, calibration=model.calibration.point,
                   partial_calibration=None if part is None else part.point)  # fmt: skip


def recalibrated(model: MetaModel, values: np.ndarray, mask: np.ndarray, start_step: int,
                 trim: bool = True, neighbours: bool = True,
                 **parts: bool) -> MetaModel:  # fmt: skip
    """The same model, its residual tail refitted on 1024 tasks drawn from the training
    window as the product calibrates (weekday factors included), with or without the
    ridge head's refit without support outliers (``trim``), the veto's
    deviations against their neighbours' (``neighbours``), and any of ``calibrate``'s
    parts (``parts``: a keyword of CALIBRATION_PARTS, False to leave it out)."""
    cfg = model.config if trim else replace(model.config, trim=None)
    spec = model.spec if neighbours else replace(model.spec, veto_neighbours=False)
    g = torch.Generator().manual_seed(1)
    batch = sample_tasks(torch.as_tensor(values), torch.as_tensor(mask), 1024, spec,
                         cfg.k, cfg.horizon, start_step, g, cfg.cut_every)  # fmt: skip
    tail = calibrate(model.params, batch, cfg.inner_steps, model.rates, trim=cfg.trim,
                     steps_per_day=cfg.steps_per_day, **parts)  # fmt: skip
    return MetaModel(model.params, spec, cfg, tail, model.metrics, model.inner_rates)


def snaive_log_tail(values: np.ndarray, t0: int, horizon: int, period: np.ndarray) -> np.ndarray:
    """Seasonal naive + robust z over columns [t0, t0 + horizon): log two-sided tail."""
    n = len(values)
    rows = np.arange(n)[:, None]
    cols = t0 + np.arange(horizon)[None, :]
    back = period[:, None] * (1 + np.arange(horizon)[None, :] // period[:, None])
    fc = values[rows, cols - back]
    hist = values[:, t0 - 7 * 24 : t0]
    diffs = hist - values[:, t0 - 7 * 24 - 24 : t0 - 24]  # day-over-day changes
    med = np.nanmedian(diffs, axis=1, keepdims=True)
    mad = 1.4826 * np.nanmedian(np.abs(diffs - med), axis=1, keepdims=True)
    mad = np.maximum(mad, 1e-6 * (np.nanmean(np.abs(hist), axis=1, keepdims=True) + 1e-9))
    resid = values[:, t0 : t0 + horizon] - fc
    return normal_log_tail((resid - med) / mad)


def mstl_log_tail(
    values: np.ndarray, t0: int, horizon: int, history: int
) -> tuple[np.ndarray, float]:
    """statsforecast MSTL (season 24) fit on [t0 - history, t0): log tail of the horizon."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL

    y = pd.DataFrame(values[:, t0 - history : t0].T).ffill().bfill().to_numpy().T
    y = np.nan_to_num(y)
    n = len(y)
    df = pd.DataFrame({"unique_id": np.repeat(np.arange(n), history),
                       "ds": np.tile(np.arange(history), n), "y": y.ravel()})  # fmt: skip
    t = time.perf_counter()
    fc = (
        StatsForecast(models=[MSTL(season_length=24)], freq=1, n_jobs=1)
        .forecast(df=df, h=horizon, level=[95])
        .sort_values(["unique_id", "ds"])
    )
    seconds = time.perf_counter() - t
    mean = fc["MSTL"].to_numpy().reshape(n, horizon)
    sigma = (fc["MSTL-hi-95"] - fc["MSTL-lo-95"]).to_numpy().reshape(n, horizon) / (2 * 1.959964)
    sigma = np.maximum(sigma, 1e-9)
    return normal_log_tail((values[:, t0 : t0 + horizon] - mean) / sigma), seconds


def tsmeta_log_tail(model: MetaModel, values: np.ndarray, mask: np.ndarray, ids: np.ndarray,
                    t0: int, start_step: int, rate: float, history: int = 0) -> np.ndarray:  # fmt: skip
    """log tail of the horizon from ``t0``; ``history`` > 0: the nightly job's tails, each
    series' residual history built from that many horizons scored before ``t0`` first."""
    h = model.config.horizon
    reach = window_reach(model.spec, model.config.k, h)

    def at(t: int):  # noqa: ANN202
        first = max(0, t - reach)
        return score_day(values[:, first : t + h], mask[:, first : t + h], ids, start_step + first,
                         model, rate)  # fmt: skip

    past = NightHistory()
    for w in range(history, 0, -1):
        past.apply(at(t0 - w * h), rate)
        past = past.next()
    day = past.apply(at(t0), rate) if history else at(t0)
    return np.log(np.maximum(day.tail, 1e-300))


def summarise(log_tail: dict[str, np.ndarray], event: np.ndarray, kind: np.ndarray,
              observed: np.ndarray, rate: float, kinds: tuple[str, ...]) -> dict:  # fmt: skip
    out = {}
    label = event >= 0
    for name, lt in log_tail.items():
        lt = np.where(observed, lt, np.nan)
        flag = np.nan_to_num(lt, nan=0.0) < math.log(rate)
        res = event_scores(flag, event, observed)
        res["pr_auc"] = pr_auc(-lt, label)
        res["per_kind"] = {}
        for k, kname in enumerate(kinds):
            sel = kind == k
            if not (sel & observed).any():
                continue
            ev = np.where(sel, event, -1)
            keep = np.where(label & ~sel, np.nan, -lt)  # other kinds' points left out
            res["per_kind"][kname] = {"recall": event_scores(flag, ev, observed)["recall"],
                                      "pr_auc": pr_auc(keep, sel)}  # fmt: skip
        out[name] = res
    return out


def flag_rates(log_tail: dict[str, np.ndarray], observed: np.ndarray, rate: float) -> dict:
    return {name: float(((lt < math.log(rate)) & observed).sum() / observed.sum())
            for name, lt in log_tail.items()}  # fmt: skip


def operating_points(log_tail: dict[str, np.ndarray], event: np.ndarray, observed: np.ndarray,
                     clean: dict[str, np.ndarray], clean_observed: np.ndarray,
                     rate: float) -> dict:  # fmt: skip
    """Each method's event F1 at other thresholds than the configured rate: at ten times
    the rate (a looser configuration, as every method would be given), and at the
    threshold that makes its own flag rate on the anomaly-free data equal the rate (the
    detector's power at an equal false-alarm cost, whatever its calibration). Each with
    the clean flag rate it comes with."""
    out = {}
    for name, lt in log_tail.items():
        if name not in clean:
            continue
        c = clean[name][clean_observed]
        c = np.sort(np.nan_to_num(c, nan=0.0))
        # the largest threshold flagging at most rate of the clean points
        matched = c[int(math.floor(rate * len(c)))] if len(c) else -np.inf
        lt = np.nan_to_num(np.where(observed, lt, np.nan), nan=0.0)
        res = {}
        for label, thr in (("rate x10", math.log(10 * rate)), ("matched clean rate", matched)):
            r = event_scores(lt < thr, event, observed)
            r["clean_rate"] = float((c < thr).mean()) if len(c) else float("nan")
            res[label] = {k: r[k] for k in ("precision", "recall", "f1", "clean_rate")}
        out[name] = res
    return out


def corpus(n: int, nights: int, seed: int, anomaly_rate: float):  # noqa: ANN201
    """(values, ids, labels, start_step) of the generator's corpus, one block concatenated."""
    blocks = list(generate_blocks(n, "h", TRAIN_DAYS + nights, "2026-10-01", seed, anomaly_rate))
    values = np.concatenate([b.values for b in blocks]).astype(np.float32)
    ids = np.concatenate([b.series_ids for b in blocks])
    labels = pl.concat([b.labels for b in blocks])
    return values, ids, labels, steps_since_epoch(datetime(2026, 10, 1), "h")


def run_synthetic(args: argparse.Namespace) -> dict:
    rate = args.rate
    values, ids, labels, start_step = corpus(args.series, args.nights, args.seed, 0.02)
    mask = ~np.isnan(values)
    train = TRAIN_DAYS * 24
    period = detect_periods(values[:, train - 14 * 24 : train], mask[:, train - 14 * 24 : train],
                            (24, 168), 0.3).period  # fmt: skip
    groups = {int(p): np.flatnonzero(period == p) for p in np.unique(period)}
    (models, raw, recal, unvetoed, unisolated, untrimmed,
     no_onset, by_level) = ({} for _ in range(8))  # fmt: skip
    t = time.perf_counter()
    for p, rows in groups.items():
        spec = FeatureSpec(period=p or 24, relative_to_lag=args.relative,
                           veto_lag=168 if args.week_veto and (p or 24) < 168 else 0,
                           second_lag=168 if args.week_lag and (p or 24) < 168 else 0,
                           lag_periods=args.lag_periods)  # fmt: skip
        cfg = MetaConfig(algorithm=args.algorithm, k=args.k, horizon=24, meta_steps=args.meta_steps,
                         meta_batch=32, seed=args.seed, inner_lr=args.inner_lr,
                         without=tuple(args.without), steps_per_day=24)  # fmt: skip
        m = meta_train(values[rows, :train], mask[rows, :train], start_step, spec, cfg)
        models[p], raw[p] = m, unadapted(m, values[rows, :train], mask[rows, :train], start_step)
        recal[p] = recalibrated(m, values[rows, :train], mask[rows, :train], start_step)
        unvetoed[p] = recalibrated(m, values[rows, :train], mask[rows, :train], start_step,
                                   veto=False)  # fmt: skip
        unisolated[p] = recalibrated(m, values[rows, :train], mask[rows, :train], start_step,
                                     isolation=False)  # fmt: skip
        untrimmed[p] = recalibrated(m, values[rows, :train], mask[rows, :train], start_step,
                                    trim=False)  # fmt: skip
        no_onset[p] = recalibrated(m, values[rows, :train], mask[rows, :train], start_step,
                                   onsets=False)  # fmt: skip
        by_level[p] = recalibrated(m, values[rows, :train], mask[rows, :train], start_step,
                                   neighbours=False)  # fmt: skip
    train_seconds = time.perf_counter() - t

    def score_all(values: np.ndarray, mask: np.ndarray, ids: np.ndarray, period: np.ndarray):  # noqa: ANN202
        groups = {int(p): np.flatnonzero(period == p) for p in np.unique(period)}
        n, T = values.shape
        out = {name: np.full((n, T - train), np.nan) for name in METHODS}
        seconds = dict.fromkeys(METHODS, 0.0)
        sf_rows = np.arange(min(n, args.mstl_series))
        for night in range(args.nights):
            t0 = train + 24 * night
            sl = slice(t0 - train, t0 - train + 24)
            for p, rows in groups.items():
                model = models.get(p, models[24])
                t = time.perf_counter()
                out["tsmeta, own history"][rows, sl] = tsmeta_log_tail(
                    model, values[rows], mask[rows], ids[rows], t0, start_step, rate, OWN_HISTORY
                )
                seconds["tsmeta, own history"] += time.perf_counter() - t
                for name, m in (("tsmeta", model), ("unadapted init", raw.get(p, raw[24])),
                                ("tsmeta, points only", points_only(model)),
                                ("tsmeta, 1024 tasks", recal.get(p, recal[24])),
                                ("tsmeta, 1024 tasks, no veto", unvetoed.get(p, unvetoed[24])),
                                ("tsmeta, 1024 tasks, no isolation", unisolated.get(p, unisolated[24])),
                                ("tsmeta, 1024 tasks, no trim", untrimmed.get(p, untrimmed[24])),
                                ("tsmeta, 1024 tasks, no onset", no_onset.get(p, no_onset[24])),
                                ("tsmeta, 1024 tasks, level veto", by_level.get(p, by_level[24]))):  # fmt: skip
                    t = time.perf_counter()
                    # the ablation rows as the nightly job scores: with the residual history
                    hist = OWN_HISTORY if name.startswith(ABLATED) else 0
                    out[name][rows, sl] = tsmeta_log_tail(m, values[rows], mask[rows], ids[rows],
                                                          t0, start_step, rate, hist)  # fmt: skip
                    seconds[name] += time.perf_counter() - t
            t = time.perf_counter()
            per = np.where(period == 0, 24, period)
            out["seasonal naive + robust z"][:, sl] = snaive_log_tail(values, t0, 24, per)
            seconds["seasonal naive + robust z"] += time.perf_counter() - t
            lt, s = mstl_log_tail(values[sf_rows], t0, 24, 14 * 24)
            out["MSTL interval"][sf_rows, sl] = lt
            seconds["MSTL interval"] += s
        return out, seconds

    scores, seconds = score_all(values, mask, ids, period)
    # labelled points of the scored nights
    T = values.shape[1]
    event = np.full((len(ids), T - train), -1, dtype=np.int64)
    kind = np.full(event.shape, -1, dtype=np.int8)
    width = event.shape[1]
    origin = datetime(2026, 10, 1, tzinfo=UTC)
    hour = timedelta(hours=1)
    lab = (
        labels.with_row_index("event")
        .join(pl.DataFrame({"series_id": ids, "row": np.arange(len(ids))}), on="series_id")
        .with_columns(
            ((pl.col("start") - origin) / hour - train).cast(pl.Int64).clip(0, None).alias("a"),
            ((pl.col("end") - origin) / hour - train).cast(pl.Int64).clip(None, width).alias("b"),
            pl.col("kind").replace_strict(ANOMALY_KINDS, list(range(len(ANOMALY_KINDS)))),
        )
        .filter(pl.col("b") > pl.col("a"))
    )
    length = (lab["b"] - lab["a"]).to_numpy()
    at_row = np.repeat(lab["row"].to_numpy(), length)
    at_col = np.repeat(lab["a"].to_numpy(), length) + (
        np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    )
    event[at_row, at_col] = np.repeat(lab["event"].to_numpy(), length)
    kind[at_row, at_col] = np.repeat(lab["kind"].to_numpy(), length)
    observed = mask[:, train:]
    sf_rows = np.arange(min(len(ids), args.mstl_series))
    full = summarise({k: v for k, v in scores.items() if k != "MSTL interval"}, event, kind,
                     observed, rate, ANOMALY_KINDS)  # fmt: skip
    sample = summarise({k: v[sf_rows] for k, v in scores.items()}, event[sf_rows], kind[sf_rows], observed[sf_rows], rate,
                       ANOMALY_KINDS) if len(sf_rows) else {}  # fmt: skip
    # anomaly-free data: a clean corpus (other series), the same models
    cvalues, cids, _, _ = corpus(args.series, args.nights, args.seed + 1, 0.0)
    cmask = ~np.isnan(cvalues)
    cper = detect_periods(cvalues[:, train - 14 * 24 : train], cmask[:, train - 14 * 24 : train],
                          (24, 168), 0.3).period  # fmt: skip
    clean, _ = score_all(cvalues, cmask, cids, cper)
    cobs = cmask[:, train:]
    rates = flag_rates({k: v for k, v in clean.items() if k != "MSTL interval"}, cobs, rate)
    rates["MSTL interval"] = flag_rates(
        {"m": clean["MSTL interval"][sf_rows]}, cobs[sf_rows], rate
    )["m"]
    nomstl = {k: v for k, v in scores.items() if k != "MSTL interval"}
    ops = operating_points(nomstl, event, observed, clean, cobs, rate)
    ops_sample = operating_points({k: v[sf_rows] for k, v in scores.items()}, event[sf_rows],
                                  observed[sf_rows], {k: v[sf_rows] for k, v in clean.items()},
                                  cobs[sf_rows], rate) if len(sf_rows) else {}  # fmt: skip
    return {"series": len(ids), "nights": args.nights, "mstl_series": len(sf_rows),
            "operating_points": ops, "operating_points_sample": ops_sample,
            "train_seconds": round(train_seconds, 1), "k": args.k,
            "periods": {p: len(r) for p, r in groups.items()},
            "all_series": full, "mstl_sample": sample, "clean_flag_rate": rates,
            "seconds_per_series_night": {k: v / (len(ids) if k != "MSTL interval" else max(len(sf_rows), 1)) / args.nights
                                         for k, v in seconds.items()}}  # fmt: skip


def run_m4(args: argparse.Namespace) -> dict:
    from tsmeta.data.m4 import M4_HORIZON, m4_panel

    rate = args.rate
    ids, values, mask, cut = m4_panel(args.m4_dir)
    start_step = (-cut) % 168
    H = M4_HORIZON
    spec = FeatureSpec(period=24, relative_to_lag=args.relative,
                       veto_lag=168 if args.week_veto else 0,
                       second_lag=168 if args.week_lag else 0,
                       lag_periods=args.lag_periods)  # fmt: skip
    cfg = MetaConfig(algorithm=args.algorithm, k=args.m4_k, horizon=H, meta_steps=args.m4_meta_steps,
                     meta_batch=64, cut_every=1, inner_lr=args.inner_lr,
                     eval_every=50, patience=8, seed=args.seed, without=tuple(args.without), steps_per_day=24)  # fmt: skip
    model = meta_train(values[:, :cut], mask[:, :cut], start_step, spec, cfg)
    raw = unadapted(model, values[:, :cut], mask[:, :cut], start_step)
    train_part = (values[:, :cut], mask[:, :cut], start_step)
    # the ablation: the same model recalibrated with every part, then with one left out
    ablation = {
        "tsmeta, 1024 tasks": recalibrated(model, *train_part),
    }
    for part in CALIBRATION_PARTS:
        ablation[f"tsmeta, 1024 tasks, no {part}"] = recalibrated(model, *train_part,
                                                                  **{part: False})  # fmt: skip
    ablation["tsmeta, 1024 tasks, no trim"] = recalibrated(model, *train_part, trim=False)
    ablation["tsmeta, 1024 tasks, level veto"] = recalibrated(model, *train_part,
                                                              neighbours=False)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    n = len(ids)
    diffs = values[:, cut - 7 * 24 : cut] - values[:, cut - 8 * 24 : cut - 24]
    spread = 1.4826 * np.nanmedian(np.abs(diffs - np.nanmedian(diffs, 1, keepdims=True)), 1)
    spread = np.maximum(spread, 1e-3 * np.nanmean(np.abs(values[:, :cut]), 1))
    kinds = ("spike", "dip", "level_shift")
    injected = values.copy()
    event = np.full((n, H), -1, dtype=np.int64)
    kind = np.full((n, H), -1, dtype=np.int8)
    hit = rng.permutation(n)[: n // 2]
    for e, i in enumerate(hit):  # 207 injections: the benchmark's own loop
        k = rng.integers(0, 3)
        at = int(rng.integers(0, H - 12))
        length = 1 if k < 2 else int(rng.integers(6, 13))
        size = rng.uniform(4, 8) if k < 2 else rng.uniform(3, 6)
        sign = 1 if k == 0 else -1 if k == 1 else rng.choice([-1, 1])
        injected[i, cut + at : cut + at + length] += sign * size * spread[i]
        event[i, at : at + length] = e
        kind[i, at : at + length] = k
    observed = mask[:, cut:]
    out = {}
    for label, vals in (("injected", injected), ("clean", values)):
        scores = {}
        for name, m in (("tsmeta", model), ("unadapted init", raw),
                        ("tsmeta, points only", points_only(model))):  # fmt: skip
            scores[name] = tsmeta_log_tail(m, vals, mask, ids, cut, start_step, rate)
        for name, m in ablation.items():  # as the nightly job scores: with the residual history
            scores[name] = tsmeta_log_tail(m, vals, mask, ids, cut, start_step, rate, OWN_HISTORY)
        scores["tsmeta, own history"] = tsmeta_log_tail(model, vals, mask, ids, cut, start_step,
                                                        rate, OWN_HISTORY)  # fmt: skip
        scores["seasonal naive + robust z"] = snaive_log_tail(vals, cut, H, np.full(n, 24))
        scores["MSTL interval"], _ = mstl_log_tail(vals, cut, H, 28 * 24)
        out[label] = scores
    return {"series": n, "injected_series": len(hit), "kinds": kinds, "k": args.m4_k,
            "history_mstl": 28 * 24,
            "all_series": summarise(out["injected"], event, kind, observed, rate, kinds),
            "clean_flag_rate": flag_rates(out["clean"], observed, rate),
            "operating_points": operating_points(out["injected"], event, observed, out["clean"],
                                                 observed, rate)}  # fmt: skip


def print_table(title: str, res: dict, rates: dict, rate: float) -> None:
    print(f"\n{title}")
    print(
        f"{'method':<32} {'precision':>9} {'recall':>7} {'F1':>6} {'PR-AUC':>7} {'clean rate':>11}"
    )
    for name, r in res.items():
        print(f"{name:<32} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} "
              f"{r['pr_auc']:7.3f} {rates.get(name, float('nan')):11.2e}")  # fmt: skip
    kinds = sorted({k for r in res.values() for k in r["per_kind"]})
    print(f"per kind, recall / PR-AUC (configured false-alarm rate {rate:g}):")
    print(f"{'method':<32} " + " ".join(f"{k:>17}" for k in kinds))
    for name, r in res.items():
        cells = [r["per_kind"].get(k) for k in kinds]
        print(f"{name:<32} " + " ".join(
            f"{c['recall']:8.3f}/{c['pr_auc']:<8.3f}" if c else f"{'-':>17}" for c in cells))  # fmt: skip


def print_operating_points(ops: dict, rate: float) -> None:
    if not ops:
        return
    print(f"event P / R / F1 (clean flag rate) at a configured rate of {10 * rate:g}, and at "
          f"each method's threshold whose clean flag rate is {rate:g}:")  # fmt: skip
    print(f"{'method':<32} {'rate x10':>32} {'matched clean rate':>32}")
    for name, r in ops.items():
        cells = [f"{c['precision']:.3f}/{c['recall']:.3f}/{c['f1']:.3f} ({c['clean_rate']:.1e})"
                 for c in (r["rate x10"], r["matched clean rate"])]  # fmt: skip
        print(f"{name:<32} " + " ".join(f"{c:>32}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=3000, help="generator corpus size")
    ap.add_argument("--nights", type=int, default=3)
    ap.add_argument("--mstl-series", type=int, default=600, help="series MSTL scores (slow)")
    ap.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default=Settings.model_fields["algorithm"].default,
        help="tsmeta's meta-learner (default: the product's)",
    )
    ap.add_argument("--meta-steps", type=int, default=300)
    ap.add_argument("--inner-lr", type=float, default=0.1,
                    help="inner step size (ridge: the penalty's initial value)")  # fmt: skip
    ap.add_argument("--m4-meta-steps", type=int, default=1500)
    ap.add_argument("--rate", type=float, default=1e-3, help="configured false-alarm rate")
    ap.add_argument("--relative", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--week-veto", action=argparse.BooleanOptionalAction, default=True,
                    help="the veto's second reference a week back, as the product's hourly "
                         "models of a daily period have (FeatureSpec.veto_lag)")  # fmt: skip
    ap.add_argument("--week-lag", action=argparse.BooleanOptionalAction, default=True,
                    help="the week before as a second lagged input, as the product's hourly "
                         "models of a daily period have (FeatureSpec.second_lag)")  # fmt: skip
    ap.add_argument("--lag-periods", type=int, default=Settings().lag_periods,
                    help="periods the lagged inputs' median spans (FeatureSpec.lag_periods; "
                         "default: the product's)")  # fmt: skip
    ap.add_argument("--m4-dir", type=Path, default=None)
    ap.add_argument("--skip-m4", action="store_true")
    ap.add_argument("--skip-generator", action="store_true", help="the M4 corpus alone")
    ap.add_argument("--m4-k", type=int, default=48, help="support points K on M4")
    ap.add_argument(
        "--k",
        type=int,
        default=24,
        help="support points K on the generator's corpus (the product's hourly default)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--without", nargs="*", default=[], choices=CALIBRATION_PARTS,
                    help="calibration parts left out of the trained models (an ablation)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    res: dict = {"rate": args.rate, "config": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_generator:
        res["synthetic"] = run_synthetic(args)
        syn = res["synthetic"]
        print(f"(a) generator corpus: {syn['series']} series x {syn['nights']} nights "
              f"(periods {syn['periods']}), K = {syn['k']}, meta-training {syn['train_seconds']} s")  # fmt: skip
        print_table(
            "all series (MSTL not run on all)", syn["all_series"], syn["clean_flag_rate"], args.rate
        )
        print_operating_points(syn["operating_points"], args.rate)
        if syn["mstl_sample"]:
            print_table(f"the first {syn['mstl_series']} series, every method", syn["mstl_sample"],
                        syn["clean_flag_rate"], args.rate)  # fmt: skip
            print_operating_points(syn["operating_points_sample"], args.rate)
        print(
            "seconds per series and night:",
            {k: f"{v:.2e}" for k, v in syn["seconds_per_series_night"].items()},
        )
    if not args.skip_m4:
        try:
            res["m4"] = run_m4(args)
        except FileNotFoundError as exc:
            print(f"(b) M4 skipped: {exc}", file=sys.stderr)
        else:
            m4 = res["m4"]
            print_table(f"(b) M4 Hourly test horizons, labelled anomalies injected into "
                        f"{m4['injected_series']} of {m4['series']} series (tsmeta adapts from "
                        f"K = {m4['k']} points; MSTL fits {m4['history_mstl']})", m4["all_series"],
                        m4["clean_flag_rate"], args.rate)  # fmt: skip
            print_operating_points(m4["operating_points"], args.rate)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
