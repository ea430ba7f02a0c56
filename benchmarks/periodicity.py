"""Period detection: accuracy, M4 Hourly, throughput and memory, against a plain ACF peak.

* accuracy on generated series with a known period (a day or a week: 24 or 168 hourly, 672
  points; with ``--freqs``, other steps too: 288 or 2,016 at 5 minutes, 1,440 or 10,080 at
  1 minute, over the 14 days ``profile`` reads) across noise levels (noise sd relative to a
  unit-variance seasonal pattern), and on white noise (should be called aperiodic);
* M4 Hourly (the last 672 points of each of the 414 training series): share found at 24,
  at 168, and aperiodic;
* throughput (series/s) and peak memory over ``--series`` series in chunks of 65,536
  (in-memory panels: detection compute only, reading excluded);
* the peer, in the same run: a plain ACF-peak method (the lag in [2, T/2] with the largest
  autocorrelation, aperiodic if below the Bartlett band), via the FFT ACF.

    python benchmarks/periodicity.py --series 2000000 --json periodicity.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from tsmeta.periodicity import APERIODIC, autocorrelation, detect_periods

T = 672
CANDIDATES = (24, 168)


def acf_peak(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The peer: the lag of the highest ACF in [2, T/2], 0 if it is inside the white-noise band."""
    acf, pairs = autocorrelation(values, mask, values.shape[1] // 2)
    lag = 2 + np.argmax(acf[:, 2:], axis=1)
    best = acf[np.arange(len(lag)), lag]
    band = 1.96 / np.sqrt(np.maximum(pairs[np.arange(len(lag)), lag], 1))
    return np.where(best > np.maximum(band, 0.3), lag, APERIODIC)


def seasonal(
    n: int, period: int, noise: float, rng: np.random.Generator, T: int = T, spd: int = 24
) -> np.ndarray:
    t = np.arange(T)
    k = np.arange(1, 4)[:, None, None]
    coef = rng.normal(size=(3, n, 2)) * np.array([1.0, 0.5, 0.3])[:, None, None]
    ang = 2 * np.pi * k * t / period  # (3, 1, T)
    x = (coef[..., :1] * np.sin(ang) + coef[..., 1:] * np.cos(ang)).sum(0)
    if period == 7 * spd:  # a weekly pattern made of a daily shape damped at weekends
        daily = (
            coef[..., :1] * np.sin(2 * np.pi * k * t / spd)
            + coef[..., 1:] * np.cos(2 * np.pi * k * t / spd)
        ).sum(0)
        x = daily * (1 - 0.7 * ((t // spd) % 7 >= 5)) + 0.5 * x
    x = x / x.std(axis=1, keepdims=True)
    return (x + noise * rng.normal(size=(n, T))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=2_000_000, help="series timed for throughput")
    ap.add_argument("--per-level", type=int, default=2000, help="series per accuracy cell")
    ap.add_argument("--freqs", default="h", help="steps whose accuracy is measured: h,5min,1min")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    out: dict = {"accuracy": [], "m4": None, "throughput": None}

    from tsmeta.frequency import normalise_freq, steps_per_day

    for freq in [normalise_freq(f) for f in args.freqs.split(",")]:
        spd = steps_per_day(freq)
        cands, n_steps = (spd, 7 * spd), (T if spd == 24 else 14 * spd)
        # the peer's FFT over every lag holds ~2^(log2(2T)+1) complex values a series: a
        # subsample of the cell at long series
        peer_n = min(args.per_level, max(100, args.per_level * 672 // n_steps))
        for period in cands:
            for noise in (0.25, 0.5, 1.0, 2.0):
                x = seasonal(args.per_level, period, noise, rng, n_steps, spd)
                m = np.ones_like(x, dtype=bool)
                ours = detect_periods(x, m, cands).period
                out["accuracy"].append({"freq": freq, "truth": period, "noise_sd": noise,
                                        "tsmeta": float(np.mean(ours == period)),
                                        "acf_peak": float(np.mean(acf_peak(x[:peer_n], m[:peer_n]) == period))})  # fmt: skip
        x = rng.normal(size=(args.per_level, n_steps)).astype(np.float32)
        m = np.ones_like(x, dtype=bool)
        out["accuracy"].append({"freq": freq, "truth": "white noise", "noise_sd": 1.0,
                                "tsmeta": float(np.mean(detect_periods(x, m, cands).period == APERIODIC)),
                                "acf_peak": float(np.mean(acf_peak(x[:peer_n], m[:peer_n]) == APERIODIC))})  # fmt: skip

    try:
        from tsmeta.data.m4 import m4_wide

        _, series, _ = m4_wide()
        x = np.stack([s[-T:] for s in series]).astype(np.float32)
        m = np.ones_like(x, dtype=bool)
        ours, peer = detect_periods(x, m, CANDIDATES).period, acf_peak(x, m)
        out["m4"] = {
            "series": len(series),
            "tsmeta": {str(p): float(np.mean(ours == p)) for p in (24, 168, APERIODIC)},
            "acf_peak": {"24": float(np.mean(peer == 24)), "168": float(np.mean(peer == 168)),
                         "0": float(np.mean(peer == APERIODIC)), "other": float(np.mean(~np.isin(peer, (0, 24, 168))))},
        }  # fmt: skip
    except FileNotFoundError as exc:
        print(f"M4 skipped: {exc}", file=sys.stderr)

    chunk = 65_536
    block = seasonal(chunk, 24, 0.5, rng)  # reused: throughput does not depend on the values
    mask = np.ones_like(block, dtype=bool)
    n_chunks = -(-args.series // chunk)
    t = time.perf_counter()
    for _ in range(n_chunks):
        detect_periods(block, mask, CANDIDATES)
    ours = (time.perf_counter() - t) / (n_chunks * chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # before the peer's FFTs
    small = block[:8192], mask[:8192]  # the peer's FFT over all lags needs ~1 GB per 8k series
    t = time.perf_counter()
    acf_peak(*small)
    peer = (time.perf_counter() - t) / 8192
    out["throughput"] = {"series": args.series, "points": T, "chunk": chunk,
                         "tsmeta_seconds": round(ours * args.series, 1),
                         "tsmeta_series_per_s": round(1 / ours),
                         "acf_peak_series_per_s": round(1 / peer),
                         "peak_rss_gib": round(peak, 2)}  # fmt: skip

    print(f"{'step':>6}{'truth':>12}{'noise sd':>10}{'tsmeta':>9}{'acf peak':>10}")
    for r in out["accuracy"]:
        print(
            f"{r['freq']:>6}{r['truth']!s:>12}{r['noise_sd']:>10}{r['tsmeta']:>9.3f}{r['acf_peak']:>10.3f}"
        )
    if out["m4"]:
        print(f"\nM4 Hourly ({out['m4']['series']} series, last {T} points): share at period")
        for name in ("tsmeta", "acf_peak"):
            print(f"  {name:<9}" + "  ".join(f"{k}: {v:.3f}" for k, v in out["m4"][name].items()))
    th = out["throughput"]
    print(f"\nthroughput ({th['series']:,} series x {T} points, chunks of {chunk:,}): tsmeta "
          f"{th['tsmeta_series_per_s']:,} series/s ({th['tsmeta_seconds']} s), acf peak "
          f"{th['acf_peak_series_per_s']:,} series/s; tsmeta's peak memory {th['peak_rss_gib']} GiB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
