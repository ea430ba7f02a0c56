"""Synthetic corpus generation: throughput and peak memory.

    python benchmarks/generate.py --series 1000000 --days 14 [--json out.json]

Writes the dataset to a temporary folder (or --out), prints a table, and with --json
writes the figures. Peak memory is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tsmeta.data.synthetic import write_synthetic_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--freq", choices=["h", "d"], default="h")
    ap.add_argument("--out", type=Path, default=None, help="keep the dataset here")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="tsmeta-gen-")) / "dataset"
    t = time.perf_counter()
    m = write_synthetic_dataset(out, args.series, args.freq, args.days)
    seconds = time.perf_counter() - t
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
    figures = {
        "series": args.series, "days": args.days, "freq": args.freq, "rows": m["rows"],
        "anomalies": m["anomalies"], "seconds": round(seconds, 1),
        "series_per_s": round(args.series / seconds), "rows_per_s": round(m["rows"] / seconds),
        "peak_rss_gib": round(peak, 2), "dataset_gib": round(size / 1024**3, 2),
    }  # fmt: skip
    width = max(len(k) for k in figures)
    print(f"{'figure':<{width}}  value")
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.out is None:
        shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
