"""Nightly scoring in-process vs on Ray, on one machine: which should be the default?

Generates ``--series`` hourly series (not timed), profiles them and meta-trains briefly
(not timed), then times ``tsmeta.jobs.score_night`` for the last day with
``executor=local`` and ``executor=ray`` (Ray already started; best of ``--repeat``).

    python benchmarks/scoring_executor.py --series 50000 --json executor.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from tsmeta import jobs
from tsmeta.config import load_settings
from tsmeta.data.synthetic import write_synthetic_dataset
from tsmeta.execution import ensure_ray


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    night = date(2026, 11, 29)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(Path(tmp) / "dataset", args.series, "h", 29, "2026-11-01", seed=0)
        base = load_settings(data_dir=Path(tmp), meta_steps=50)
        jobs.profile_series(base, night, "bench")
        jobs.train_models(base, night, "bench")
        ensure_ray()
        rows = []
        for executor in ("local", "ray"):
            # one night timed: no history warm-up (a first night's one-off)
            settings = load_settings(data_dir=Path(tmp), executor=executor, history_warmup_nights=0)
            jobs.score_night(settings, night, "warm-up")
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                frame, stats = jobs.score_night(settings, night, "bench")
                best = min(best, time.perf_counter() - t)
            rows.append({"executor": executor, "series": stats["series"], "seconds": round(best, 2),
                         "series_per_s": round(stats["series"] / best), "flagged": frame.height})  # fmt: skip
    print(f"nightly scoring of one day (read window, adapt, score), best of {args.repeat}:")
    print(f"{'executor':<10}{'series':>10}{'seconds':>10}{'series/s':>12}{'flagged':>10}")
    for r in rows:
        print(
            f"{r['executor']:<10}{r['series']:>10,}{r['seconds']:>10}{r['series_per_s']:>12,}{r['flagged']:>10,}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
