"""Nightly adaptation throughput: series adapted and forecast per second.

A batch of generated hourly series (daily period), K = 24 support points, H = 24 forecast
points, 5 inner SGD steps, the default network (MLP 40-40 on 8 features). Compared in the
same run:

* ``batched explicit``: ``tsmeta.meta.batched.adapt_predict`` (per-series weights, hand-
  written backward, chunks of 1024 series): the path nightly scoring uses for MAML;
* ``batched anil``: the same function with the output layer's rates alone (ANIL: the
  hidden layers shared, run once; the steps adapt the output layer);
* ``batched ridge``: the same shared hidden layers with the output layer solved in closed
  form (``ridge``), leave-one-out support residuals included;
* ``batched vmap``: ``vmap`` of ``torch.func.grad`` over all series (the reference);
* ``per-series loop``: the same computation one series at a time (a sample of series,
  rate extrapolated);
* ``solve, vectorised`` against ``solve, torch.linalg``: the ridge head's K x K systems
  alone (with the inverse's diagonal), through ``tsmeta.meta.linalg.spd_solve`` and
  through torch's batched Cholesky, to check the choice on each device.

Task construction (features, normalisation) is timed separately. CUDA is measured too
when present.

    python benchmarks/adapt_throughput.py --series 65536 --json adapt.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tsmeta.data.panel import build_panel
from tsmeta.data.synthetic import generate_frame
from tsmeta.forecaster import FeatureSpec, init_params, mlp
from tsmeta.meta.batched import HEAD, adapt_predict
from tsmeta.meta.linalg import spd_solve
from tsmeta.meta.maml import RIDGE, adapt, adapt_batch, predict_batch
from tsmeta.meta.tasks import make_batch
from tsmeta.meta.train import MetaConfig

K = H = 24
STEPS = 5
LR = 0.1


MIN_SECONDS = 2.0  # each timing repeats its call at least this long (``--min-seconds``)


def timed(fn, min_seconds: float | None = None) -> float:
    """Seconds per call, repeating until ``min_seconds`` (default ``MIN_SECONDS``) have
    passed (after one warm-up)."""
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    fn()
    n, t = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t >= min_seconds:
            return (time.perf_counter() - t) / n


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_device(device: str, batch, params: dict, loop_series: int, record,  # noqa: ANN001
                   steps: int = STEPS) -> None:  # fmt: skip
    """Time the three ways of adapting ``batch`` on ``device`` and ``record`` each."""
    from tsmeta.meta.tasks import TaskBatch

    b = TaskBatch(
        *(
            getattr(batch, f).to(device)
            for f in ("xs", "ys", "ms", "xq", "yq", "mq", "loc", "scale")
        )
    )
    p = {k: v.to(device) for k, v in params.items()}
    n = b.xs.shape[0]

    def explicit() -> None:
        with torch.no_grad():
            adapt_predict(
                p, b.xs, b.ys, b.ms, b.xq, steps, LR, chunk=1024 if device == "cpu" else 65_536
            )
        sync(device)

    def vmapped() -> None:
        with torch.no_grad():
            for first in range(0, n, 8192):
                sl = slice(first, first + 8192)
                part = TaskBatch(
                    b.xs[sl],
                    b.ys[sl],
                    b.ms[sl],
                    b.xq[sl],
                    b.yq[sl],
                    b.mq[sl],
                    b.loc[sl],
                    b.scale[sl],
                )
                predict_batch(adapt_batch(p, part, steps, LR), part.xq)
        sync(device)

    n_loop = min(loop_series, n)

    def loop() -> None:
        with torch.no_grad():
            for i in range(n_loop):
                mlp(adapt(p, b.xs[i], b.ys[i], b.ms[i], steps, LR), b.xq[i])
        sync(device)

    def anil() -> None:
        with torch.no_grad():
            adapt_predict(p, b.xs, b.ys, b.ms, b.xq, steps, dict.fromkeys(HEAD, LR),
                          chunk=1024 if device == "cpu" else 65_536)  # fmt: skip
        sync(device)

    def ridge(trim: float | None = MetaConfig.trim) -> None:  # as models are configured
        with torch.no_grad():
            adapt_predict(p, b.xs, b.ys, b.ms, b.xq, steps, {RIDGE: math.log(LR)},
                          chunk=1024 if device == "cpu" else 65_536, trim=trim)  # fmt: skip
        sync(device)

    # the ridge head's solve alone (n systems of K x K, as scoring builds them, with the
    # inverse's diagonal for the leave-one-out residuals): the vectorised Cholesky against
    # torch.linalg's batched one
    h = torch.randn(n, K, 41, device=device, generator=torch.Generator(device).manual_seed(0))
    system = [h @ h.transpose(1, 2) + 2.4 * torch.eye(K, device=device),
              torch.randn(n, K, device=device, generator=torch.Generator(device).manual_seed(1))]  # fmt: skip
    del h

    def solve_vectorised() -> None:
        spd_solve(*system, inverse_diagonal=True)
        sync(device)

    def solve_linalg() -> None:
        low, _ = torch.linalg.cholesky_ex(system[0])
        torch.cholesky_solve(system[1].unsqueeze(-1), low)
        torch.diagonal(torch.cholesky_inverse(low), dim1=1, dim2=2)
        sync(device)

    record("solve, vectorised", device, n, timed(solve_vectorised))
    record("solve, torch.linalg", device, n, timed(solve_linalg))
    system.clear()
    record("batched explicit", device, n, timed(explicit))
    record("batched anil", device, n, timed(anil))
    record("batched ridge", device, n, timed(ridge))
    record("batched ridge, no trim", device, n, timed(lambda: ridge(None)))
    record("batched vmap", device, n, timed(vmapped))
    record("per-series loop", device, n_loop, timed(loop))


def main(argv: list[str] | None = None) -> int:
    global MIN_SECONDS
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=65_536)
    ap.add_argument(
        "--loop-series", type=int, default=256, help="series timed in the per-series loop"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--hidden", type=int, default=40, help="width of the MLP's two hidden layers")
    ap.add_argument("--inner-steps", type=int, default=STEPS, help="adaptation steps")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], default=None,
        help="devices timed (default: the CPU, and CUDA when torch sees a GPU)",
    )  # fmt: skip
    ap.add_argument("--gpu-chunk", type=int, default=262_144, help="score_day chunk on CUDA")
    ap.add_argument("--min-seconds", type=float, default=MIN_SECONDS,
                    help="each timing repeats its call at least this long")  # fmt: skip
    args = ap.parse_args(argv)
    MIN_SECONDS = args.min_seconds
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.threads:
        torch.set_num_threads(args.threads)

    # real series: generated data, daily period, a 9-day window ending with the scored day
    frame, _, _ = generate_frame(min(args.series, 8192), "h", 9, seed=1)
    panel = build_panel(frame, "h")
    reps = -(-args.series // panel.n_series)
    values = torch.as_tensor(np.tile(panel.values, (reps, 1))[: args.series])
    mask = torch.as_tensor(np.tile(panel.mask, (reps, 1))[: args.series])
    spec = FeatureSpec(24)
    params = init_params(spec.n_features, args.hidden, torch.Generator().manual_seed(0))
    rows = torch.arange(args.series)
    t0 = torch.full((args.series,), values.shape[1] - H)

    rows_out = []

    def record(method: str, device: str, n: int, seconds: float) -> None:
        rows_out.append({"method": method, "device": device, "series": n, "seconds": round(seconds, 4),
                         "series_per_s": round(n / seconds)})  # fmt: skip

    sec = timed(lambda: make_batch(values, mask, rows, t0, spec, K, H, panel.start_step))
    record("task construction", "cpu", args.series, sec)
    batch = make_batch(values, mask, rows, t0, spec, K, H, panel.start_step)

    for device in devices:
        measure_device(device, batch, params, args.loop_series, record, args.inner_steps)

    # the whole scoring step of a night, as the nightly job runs it per batch: features,
    # adaptation, the divergence guard, residual scale, calibrated tails, flags
    from tsmeta.detect import score_day
    from tsmeta.meta.train import MetaModel
    from tsmeta.scoring import fit_tail, fit_windows

    v_np, m_np = values.numpy(), mask.numpy()
    ids = np.arange(args.series)
    # a tail as training leaves it: a t, empirical knots and the window
    # statistics' and the isolation's tails (a partial one too)
    rng = np.random.default_rng(0)
    z_cal = rng.standard_t(5.0, size=(4096, H))
    tail = fit_tail(np.abs(z_cal).ravel())
    windows = fit_windows(torch.as_tensor(z_cal), torch.ones(z_cal.shape, dtype=torch.bool), tail,
                          rel=torch.ones(len(z_cal), dtype=torch.float64))  # fmt: skip
    tail = dataclasses.replace(tail, windows=windows)
    # the same without the onset statistic, and with the veto's deviations by level alone
    # (as before 2026-12-04); and the product's hourly models of a daily period: the week
    # before as a second input (FeatureSpec.second_lag) and as the veto's second reference
    no_onset = dataclasses.replace(tail, windows=dataclasses.replace(windows, onset=None))
    week = FeatureSpec(24, second_lag=168, veto_lag=168)
    week_params = init_params(week.n_features, args.hidden, torch.Generator().manual_seed(0))
    # and a weekly cluster adapting from one period (TSMETA_K_RULE=period): K = 168 points
    # with the median of 3 weeks as their lag input (a 29-day window), the ridge head's
    # primal form (41 x 41 systems)
    wframe, _, _ = generate_frame(min(args.series, 8192), "h", 29, seed=2)
    wpanel = build_panel(wframe, "h")
    w_np, wm_np = (np.tile(a, (reps, 1))[: args.series] for a in (wpanel.values, wpanel.mask))
    weekly = FeatureSpec(168, lag_periods=3)
    weekly_model = MetaModel(
        init_params(weekly.n_features, args.hidden, torch.Generator().manual_seed(0)), weekly,
        MetaConfig(algorithm="ridge", k=168, horizon=H, hidden=args.hidden, trim=MetaConfig.trim),
        tail, partial_calibration=tail,
    )  # fmt: skip
    for device in devices:
        chunk = 8192 if device == "cpu" else args.gpu_chunk
        for algorithm, relative, trim in (("maml", False, None), ("maml", True, None),
                                          ("anil", False, None), ("ridge", False, MetaConfig.trim),
                                          ("ridge", False, None)):  # fmt: skip
            s = FeatureSpec(24, relative_to_lag=relative)
            cfg = MetaConfig(algorithm=algorithm, k=K, horizon=H, inner_steps=args.inner_steps,
                             inner_lr=LR, hidden=args.hidden, trim=trim)  # fmt: skip
            model = MetaModel(params, s, cfg, tail, partial_calibration=tail)
            sec = timed(lambda m=model, d=device, c=chunk: score_day(
                v_np, m_np, ids, panel.start_step, m, 1e-3, c, d))  # fmt: skip
            name = (
                "score_day"
                + (" (relative)" if relative else "")
                + (f", {algorithm}" if algorithm != "maml" else "")
                + (", no trim" if algorithm == "ridge" and trim is None else "")
            )
            record(name, device, args.series, sec)
        cfg = MetaConfig(algorithm="ridge", k=K, horizon=H, hidden=args.hidden)
        for name, model in (
            ("score_day, ridge, no onset", MetaModel(params, FeatureSpec(24), cfg, no_onset,
                                                     partial_calibration=no_onset)),
            ("score_day, ridge, veto by level", MetaModel(
                params, FeatureSpec(24, veto_neighbours=False), cfg, tail, partial_calibration=tail)),
            ("score_day, ridge, hourly p24 spec", MetaModel(week_params, week, cfg, tail,
                                                            partial_calibration=tail)),
        ):  # fmt: skip
            sec = timed(lambda m=model, d=device, c=chunk: score_day(
                v_np, m_np, ids, panel.start_step, m, 1e-3, c, d))  # fmt: skip
            record(name, device, args.series, sec)
        sec = timed(lambda d=device, c=chunk: score_day(
            w_np, wm_np, ids, wpanel.start_step, weekly_model, 1e-3, c, d))  # fmt: skip
        record("score_day, ridge, weekly K = 168", device, args.series, sec)
        # the product's hourly daily-period models on the same 29-day window (the lag
        # inputs' medians read 3 weeks): targets relative to the lag median, and level ones
        for relative in (True, False):
            spec = FeatureSpec(24, relative_to_lag=relative, second_lag=168, veto_lag=168,
                               lag_periods=3)  # fmt: skip
            model = MetaModel(week_params, spec, cfg, tail, partial_calibration=tail)
            sec = timed(lambda m=model, d=device, c=chunk: score_day(
                w_np, wm_np, ids, wpanel.start_step, m, 1e-3, c, d))  # fmt: skip
            name = f"score_day, ridge, product p24, {'relative' if relative else 'level'}"
            record(name, device, args.series, sec)
    naive = {r["device"]: r["series_per_s"] for r in rows_out if r["method"] == "per-series loop"}
    print(f"adaptation throughput: K={K}, H={H}, {args.inner_steps} inner steps, "
          f"MLP {args.hidden}-{args.hidden}, "
          f"torch threads {torch.get_num_threads()}"
          + (f", GPU {torch.cuda.get_device_name()}" if "cuda" in devices else ""))  # fmt: skip
    print(f"{'method':<34}{'device':<8}{'series':>9}{'seconds':>10}{'series/s':>12}{'vs loop':>10}")
    for r in rows_out:
        adapting = r["method"] != "task construction"
        ratio = (
            r["series_per_s"] / naive[r["device"]]
            if adapting and r["device"] in naive
            else float("nan")
        )
        r["ratio_vs_loop"] = round(ratio, 1)
        print(f"{r['method']:<34}{r['device']:<8}{r['series']:>9,}{r['seconds']:>10.3f}"
              f"{r['series_per_s']:>12,}{ratio:>9.1f}x")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"threads": torch.get_num_threads(), "rows": rows_out}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
