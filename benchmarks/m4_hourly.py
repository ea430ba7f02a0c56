"""Forecast accuracy on real series: M4 Hourly, horizon 48, official sMAPE and MASE.

Every series is cut at the end of its training part (M4's split); each method forecasts
the 48 test hours from what lies before the cut:

* ``maml`` (tsmeta): a meta-learned initialisation, meta-trained on tasks cut inside the
  training parts only (the test hours are never seen), adapted to each series from its K
  most recent points with the model's inner steps, all series in one batch;
* ``maml, unadapted``: the same initialisation without adaptation (0 steps);
* ``anil``: the same, meta-trained and adapted with the inner loop on the output layer
  only (``MetaConfig.algorithm="anil"``: the hidden layers are shared features, several
  times cheaper to adapt nightly); ``--algorithms`` picks the meta-learners run;
* ``pretrain + fine-tune``: the transfer-learning baseline: one network fit to all
  training tasks jointly, then fine-tuned on the same K points with the same steps and
  rate; ``pretrain, no fine-tune`` is it before fine-tuning;
* ``seasonal naive``: the last 24 training hours, repeated;
* statsforecast ``AutoETS`` and ``MSTL`` (season 24), and ``AutoARIMA`` with
  ``--arima`` (slow): fitted to each series' whole training part, as a user would.

sMAPE (0-200) and MASE (seasonal naive in-sample scale, m = 24) are averaged over the
414 series, as in the M4 evaluation; seconds per series are wall time of forecasting
(the meta-training time is reported separately: it is paid once per cluster, not per
series). One model serves all 414 series (their periods are 24 or 168: one cluster).

    python benchmarks/m4_hourly.py --json m4.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tsmeta.config import Settings
from tsmeta.data.m4 import M4_HORIZON, m4_panel
from tsmeta.evaluation import mase, smape
from tsmeta.forecaster import FeatureSpec
from tsmeta.meta import ALGORITHMS
from tsmeta.meta.baselines import Adapted
from tsmeta.meta.tasks import make_batch
from tsmeta.meta.train import MetaConfig, MetaModel, meta_train
from tsmeta.periodicity import detect_periods

PERIOD = 24


def model_forecast(
    model: MetaModel, values: np.ndarray, mask: np.ndarray, cut: int, start_step: int,
    steps: int | None = None, rows: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Raw-unit forecasts (n, H) of every series (or ``rows``) from its K points before ``cut``."""
    v, m = torch.as_tensor(values), torch.as_tensor(mask)
    rows = torch.arange(len(values)) if rows is None else torch.as_tensor(rows)
    batch = make_batch(v, m, rows, torch.full_like(rows, cut), model.spec, model.config.k,
                       model.config.horizon, start_step)  # fmt: skip
    _, pred = Adapted.from_model(model, steps).predict(batch)
    return batch.forecast(pred).numpy()


def statsforecast_forecasts(series: list[np.ndarray], names: list[str]) -> dict:
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoARIMA, AutoETS

    makers = {"AutoETS": lambda: AutoETS(season_length=PERIOD),
              "MSTL": lambda: MSTL(season_length=PERIOD),
              "AutoARIMA": lambda: AutoARIMA(season_length=PERIOD)}  # fmt: skip
    df = pd.DataFrame({
        "unique_id": np.repeat(np.arange(len(series)), [len(s) for s in series]),
        "ds": np.concatenate([np.arange(len(s)) for s in series]),
        "y": np.concatenate(series),
    })  # fmt: skip
    out = {}
    for name in names:
        sf = StatsForecast(models=[makers[name]()], freq=1, n_jobs=1)
        t = time.perf_counter()
        fc = sf.forecast(df=df, h=M4_HORIZON)
        seconds = time.perf_counter() - t
        col = [c for c in fc.columns if c not in ("unique_id", "ds")][0]
        fc = fc.sort_values(["unique_id", "ds"])
        out[name] = (fc[col].to_numpy().reshape(len(series), M4_HORIZON), seconds)
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    ids, values, mask, cut = m4_panel(args.m4_dir)
    if args.limit:
        values, mask, ids = values[: args.limit], mask[: args.limit], ids[: args.limit]
    n = len(ids)
    start_step = (-cut) % 168  # the forecast origin sits at a midnight (and a week start)
    test = values[:, cut:].astype(np.float64)
    insample = [values[i, :cut][mask[i, :cut]].astype(np.float64) for i in range(n)]
    train_v, train_m = values[:, :cut], mask[:, :cut]
    week = 7 * PERIOD
    spec = FeatureSpec(period=PERIOD, harmonics=args.harmonics, relative_to_lag=args.relative,
                       median_base=not args.single_lag_base,
                       second_lag=week if args.week_lag else 0, lag_periods=args.lag_periods)  # fmt: skip
    rows: list[dict] = []
    fit_seconds: dict[str, float] = {}

    def add(name: str, fc: np.ndarray, seconds: float, k: int | str = "", note: str = "") -> None:
        rows.append({
            "method": name, "k": k, "smape": float(smape(test, fc).mean()),
            "mase": float(mase(test, fc, insample, PERIOD).mean()),
            "s_per_series": seconds / n, "note": note,
        })  # fmt: skip

    t = time.perf_counter()
    snaive = np.tile(values[:, cut - PERIOD : cut], (1, M4_HORIZON // PERIOD))
    add("seasonal naive", snaive.astype(np.float64), time.perf_counter() - t)

    def config(algorithm: str, k: int) -> MetaConfig:
        return MetaConfig(algorithm=algorithm, k=k, horizon=M4_HORIZON,
                          inner_steps=args.inner_steps, inner_lr=args.inner_lr, hidden=args.hidden,
                          meta_batch=args.meta_batch, meta_steps=args.meta_steps,
                          meta_lr=args.meta_lr, cut_every=1, eval_every=50,
                          patience=args.patience, seed=args.seed)  # fmt: skip

    # the product's clustering: one model per detected period (24 or 168; aperiodic -> 24)
    period = detect_periods(train_v[:, -28 * 24 :], train_m[:, -28 * 24 :], (24, 168), 0.3).period
    period = np.where(period == 168, 168, PERIOD)
    groups = {int(p): np.flatnonzero(period == p) for p in np.unique(period)}
    for k in args.k:
        for algorithm, label in [(a, f"{a}, per period") for a in args.algorithms] + [
            ("pretrain", "pretrain + fine-tune, per period")]:  # fmt: skip
            fc = np.empty_like(test)
            seconds, steps_run = 0.0, []
            for p, members in groups.items():
                cfg = config(algorithm, p if args.k_period else k)
                t = time.perf_counter()
                gspec = FeatureSpec(period=p, harmonics=args.harmonics,
                                    relative_to_lag=args.relative,
                                    median_base=not args.single_lag_base,
                                    second_lag=week if args.week_lag and p < week else 0,
                                    lag_periods=args.lag_periods)  # fmt: skip
                model = meta_train(train_v[members], train_m[members], start_step, gspec, cfg)
                fit_seconds[f"{algorithm} k={k} p={p}"] = round(time.perf_counter() - t, 1)
                steps_run.append(model.metrics["steps_run"])
                t = time.perf_counter()
                fc[members] = model_forecast(model, values, mask, cut, start_step, None, members)
                seconds += time.perf_counter() - t
            add(label, fc, seconds, "period" if args.k_period else k, "clusters " + ", ".join(
                f"p{p}: {len(r)} series, {s} meta-steps" for (p, r), s in zip(groups.items(), steps_run, strict=True)))  # fmt: skip
    for k in args.k:
        models = {}
        for algorithm in (*args.algorithms, "pretrain"):
            cfg = config(algorithm, k)
            t = time.perf_counter()
            models[algorithm] = meta_train(train_v, train_m, start_step, spec, cfg)
            fit_seconds[f"{algorithm} k={k}"] = round(time.perf_counter() - t, 1)
        for label, algorithm, steps in (
            *((a, a, None) for a in args.algorithms), (f"{args.algorithms[0]}, unadapted", args.algorithms[0], 0),
            ("pretrain + fine-tune", "pretrain", args.inner_steps),
            ("pretrain, no fine-tune", "pretrain", 0),
        ):  # fmt: skip
            t = time.perf_counter()
            fc = model_forecast(models[algorithm], values, mask, cut, start_step, steps)
            add(label, fc.astype(np.float64), time.perf_counter() - t, k,
                f"{models[algorithm].metrics['steps_run']} meta-steps")  # fmt: skip
    peers = ["AutoETS", "MSTL"] + (["AutoARIMA"] if args.arima else [])
    if not args.no_statsforecast:
        for name, (fc, seconds) in statsforecast_forecasts(insample, peers).items():
            add(name, fc, seconds, "all", "fit to the whole training part")
    return {"series": n, "horizon": M4_HORIZON, "rows": rows,
            "meta_train_seconds": fit_seconds,
            "published": {"seasonal naive": [13.912, 1.193], "M4 winner (ES-RNN)": [9.328, 0.893]},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--m4-dir", type=Path, default=None, help="default: ../shared/data/m4")
    ap.add_argument("--k", type=int, nargs="+", default=[168], help="support points K")
    ap.add_argument("--k-period", action="store_true",
                    help="the per-period models adapt from one period (the product's "
                         "TSMETA_K_RULE=period); --k then sets only the single model's K")  # fmt: skip
    ap.add_argument("--harmonics", type=int, default=3)
    ap.add_argument(
        "--relative",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="targets relative to the seasonal lag (FeatureSpec.relative_to_lag)",
    )
    ap.add_argument("--single-lag-base", action="store_true",
                    help="relative targets from the single most recent period, not the lag "
                         "median (FeatureSpec.median_base=False)")  # fmt: skip
    ap.add_argument(
        "--week-lag",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the week before as a second lagged input of models of a daily period, as the "
        "product's hourly models have (FeatureSpec.second_lag)",
    )
    ap.add_argument(
        "--algorithms",
        nargs="+",
        default=["maml", "anil", "ridge"],
        choices=[a for a in ALGORITHMS if a != "pretrain"],  # pretrain is always the baseline
        help="meta-learners to run",
    )
    ap.add_argument(
        "--lag-periods",
        type=int,
        default=Settings().lag_periods,
        help="periods the lagged inputs' median spans (default: the product's)",
    )
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=40, help="width of the MLP's two hidden layers")
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--meta-steps", type=int, default=2000)
    ap.add_argument("--meta-batch", type=int, default=64)
    ap.add_argument("--meta-lr", type=float, default=1e-3)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="first N series only (smoke runs)")
    ap.add_argument("--arima", action="store_true", help="also AutoARIMA (slow)")
    ap.add_argument("--no-statsforecast", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        res = run(args)
    except FileNotFoundError as exc:
        print(f"m4_hourly: {exc}", file=sys.stderr)
        return 2
    print(f"M4 Hourly: {res['series']} series, horizon {res['horizon']}")
    print(f"{'method':<24} {'K':>5} {'sMAPE':>8} {'MASE':>7} {'s/series':>10}  note")
    for r in sorted(res["rows"], key=lambda r: r["mase"]):
        print(f"{r['method']:<24} {r['k']!s:>5} {r['smape']:8.3f} {r['mase']:7.3f} "
              f"{r['s_per_series']:10.2e}  {r['note']}")  # fmt: skip
    for name, (s, m) in res["published"].items():
        print(f"{name + ' (published)':<30} {s:8.3f} {m:7.3f}")
    print("meta-training seconds:", res["meta_train_seconds"])
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
