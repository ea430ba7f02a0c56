"""``tsmeta evaluate``: how well the current models do on a range of nights of your dataset.

Replays the nights (every point scored, nothing written) and reports, per cluster and in
all: points scored, forecast error (MAE and M4's sMAPE), the flag rate against the
configured false-alarm rate, and, where the dataset carries labels (datasets made by
``tsmeta generate``), event-level precision, recall and F1 per anomaly kind. One night's
points are held at a time; only the per-cluster sums and the flagged points are kept.
"""

from __future__ import annotations

import uuid
from datetime import date

import polars as pl

from tsmeta import jobs, progress
from tsmeta.config import Settings
from tsmeta.evaluation import detection_quality

__all__ = ["evaluate_nights", "format_scorecard"]


def evaluate_nights(settings: Settings, first: date, last: date) -> dict:
    if last < first:
        raise ValueError(f"empty date range: {last} is before {first}; give --start <= --end")
    sums: list[pl.DataFrame] = []
    flags: list[pl.DataFrame] = []
    nights = (last - first).days + 1
    pbar = progress.bar("evaluate", total=nights, unit="night")
    for _, frame, _ in jobs.replay(settings, first, last, f"evaluate-{uuid.uuid4()}"):
        pbar.update(1)
        if frame.height == 0:
            continue
        err = (pl.col("value") - pl.col("forecast")).abs()
        den = pl.col("value").abs() + pl.col("forecast").abs()
        sums.append(
            frame.group_by("cluster_id").agg(
                pl.len().alias("points"),
                pl.col("series_id").n_unique().alias("series"),
                err.sum().alias("abs_err"),
                pl.when(den > 0).then(200 * err / den).otherwise(0.0).sum().alias("smape_sum"),
                pl.col("flag").sum().alias("flagged"),
            )
        )
        flags.append(frame.filter(pl.col("flag")).select("series_id", "ts"))
    pbar.close()
    if not sums:
        raise LookupError(
            f"nothing was scored in {first}..{last}: run `tsmeta profile` and `tsmeta train` first"
        )
    per = (
        pl.concat(sums)
        .group_by("cluster_id")
        .agg(pl.col("points", "abs_err", "smape_sum", "flagged").sum(), pl.col("series").max())
        .sort("cluster_id")
    )  # fmt: skip
    total = per.select(pl.col("points", "abs_err", "smape_sum", "flagged").sum()).row(0, named=True)

    def row(name: str, r: dict, series: int) -> dict:
        return {"cluster": name, "series": series, "points": r["points"],
                "mae": r["abs_err"] / r["points"], "smape": r["smape_sum"] / r["points"],
                "flagged": r["flagged"], "flag_rate": r["flagged"] / r["points"]}  # fmt: skip

    rows = [row(r["cluster_id"], r, r["series"]) for r in per.iter_rows(named=True)]
    rows.append(row("all", total, int(per.get_column("series").sum())))
    out: dict = {"first": str(first), "last": str(last), "false_alarm_rate": settings.false_alarm_rate,
                 "clusters": rows, "detection": None}  # fmt: skip
    try:
        from tsmeta.data.synthetic import read_labels

        labels = read_labels(settings.dataset_path)
    except FileNotFoundError:
        labels = None
    if labels is not None:
        start, _ = jobs.night_bounds(first)
        _, end = jobs.night_bounds(last)
        found = (
            pl.concat(flags)
            if flags
            else pl.DataFrame(schema={"series_id": pl.String, "ts": pl.Datetime("us", "UTC")})
        )
        q = detection_quality(found, labels, start, end)
        p, r = q["precision"], q["recall"]
        q["f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out["detection"] = q
    return out


def format_scorecard(card: dict) -> str:
    lines = [
        f"evaluation of {card['first']}..{card['last']} (configured false-alarm rate "
        f"{card['false_alarm_rate']:g}; every point replayed with today's models, nothing written)",
        f"{'cluster':<16}{'series':>9}{'points':>11}{'MAE':>11}{'sMAPE':>9}{'flagged':>9}{'flag rate':>11}",
    ]
    for r in card["clusters"]:
        lines.append(
            f"{r['cluster']:<16}{r['series']:>9,}{r['points']:>11,}{r['mae']:>11.4g}"
            f"{r['smape']:>9.3f}{r['flagged']:>9,}{r['flag_rate']:>11.2e}"
        )
    d = card["detection"]
    if d is None:
        lines.append("no labels in this dataset: detection precision/recall not computed")
    else:
        lines.append(
            f"labelled anomalies: precision {d['precision']:.3f} ({d['true_flagged_points']:,}/"
            f"{d['flagged_points']:,} flagged points inside an event), recall {d['recall']:.3f} "
            f"({d['events_detected']:,}/{d['events']:,} events), F1 {d['f1']:.3f}"
        )
        for k in d["per_kind"]:
            lines.append(
                f"  {k['kind']:<16}{k['detected']:>6,}/{k['events']:<6,} recall {k['recall']:.3f}"
            )
    return "\n".join(lines)
