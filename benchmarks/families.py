"""Detection across data families, through the product's own path, against simple peers.

For each generated family (``default``: the generator's corpus; ``business``: hourly
business metrics with multiplicative seasons, count noise, a shared holiday and breaks;
``heavy``: the generator's corpus with Student's t noise of 2.5-6 degrees of freedom):

1. write ``--weeks`` weeks of ``--series`` hourly series as the partitioned dataset;
2. ``profile`` and meta-train on the first ``--train-weeks`` weeks (``tsmeta.jobs``, the
   calls the flows make; labels are never read);
3. replay every later night with the stored models (``jobs.replay``: each night scored as
   the nightly job scores it, from the data up to that night);
4. score the same points with the peers, each from the history before the point only:
   ``seasonal naive + MAD`` (the value a week before; z from the median and MAD of the
   previous 7 days' residuals), ``3-week median + MAD`` (the median of the same hour 1,
   2 and 3 weeks before; the same z), ``matrix profile (STUMPY)`` (the library detector:
   the left matrix profile's discord distance of the day ending at the point, the same
   z, one-sided) and ``MSTL interval`` (statsforecast's MSTL with daily and weekly
   seasons, refit every week on the 3 weeks before it; with ``--mstl``: it costs about
   0.12 CPU s a series a week). The peers are in ``peers.py``.

Reported per family and method, on the replayed nights:

* event F1 at the method's own flags (the configured false-alarm rate; the peers flag
  |z| above the normal quantile of that rate) and the best event F1 over thresholds of
  its score (a labelled event is found when a flag falls inside it; a run of consecutive
  flags outside every event is one false alarm), and PR-AUC of the point scores;
* the flag rate on clean points (outside every label) overall, its worst value over
  weekdays (every cluster together) and over weekday x cluster (tsmeta's clusters, the
  same groups for every method), and the flag rate on the shared holiday, on the 7 days
  after it and on the worst of those 7 nights (business family).

Context labels (``holiday``, ``break``) are neither events nor clean points. tsmeta's shared
events are counted, with the share of the holiday's flags that are their members.

``--ablate VARIANT ...`` also retrains and replays the product with one part left out
(``VARIANTS``: a calibration part, ``MetaConfig.without``, the trim, the lag medians, the
week input), on the same data: the ablation table of benchmarks/README.md.

    python benchmarks/families.py --series 1000 --json families.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from peers import WEEK, discord_z, mstl_z, normal_quantile, peer_z

from tsmeta import jobs
from tsmeta.config import load_settings
from tsmeta.data.business import CONTEXT_KINDS, holiday_day
from tsmeta.data.io import read_window
from tsmeta.data.panel import build_panel
from tsmeta.data.synthetic import read_labels, write_synthetic_dataset
from tsmeta.evaluation import event_scores, pr_auc
from tsmeta.meta.calibrate import CALIBRATION_PARTS
from tsmeta.store.writes import read_profile


def _grid(frame: pl.DataFrame, ids: np.ndarray, start: datetime, T: int, col: str) -> np.ndarray:
    """Scatter a frame's ``col`` onto the (series, hour) grid starting at ``start``."""
    out = np.full((len(ids), T), np.nan)
    row = {s: i for i, s in enumerate(ids)}
    r = np.array([row[s] for s in frame.get_column("series_id").to_list()], dtype=np.int64)
    c = ((frame.get_column("ts").dt.replace_time_zone(None) - start.replace(tzinfo=None))
         .dt.total_hours().to_numpy())  # fmt: skip
    out[r, c] = frame.get_column(col).cast(pl.Float64).to_numpy()
    return out


def _label_grids(labels: pl.DataFrame, ids: np.ndarray, start: datetime, T: int):
    """(event id per point, -1 outside; context mask; holiday mask) on the grid."""
    event = np.full((len(ids), T), -1, dtype=np.int64)
    context = np.zeros((len(ids), T), dtype=bool)
    holiday = np.zeros((len(ids), T), dtype=bool)
    row = {s: i for i, s in enumerate(ids)}
    base = start.replace(tzinfo=None)
    for i, lab in enumerate(labels.iter_rows(named=True)):  # labels: thousands, not a hot path
        r = row.get(lab["series_id"])
        if r is None:
            continue
        a = int((lab["start"].replace(tzinfo=None) - base) / timedelta(hours=1))
        b = int((lab["end"].replace(tzinfo=None) - base) / timedelta(hours=1))
        a, b = max(a, 0), min(b, T)
        if a >= b:
            continue
        if lab["kind"] in CONTEXT_KINDS:
            context[r, a:b] = True
            holiday[r, a:b] |= lab["kind"] == "holiday"
        else:
            event[r, a:b] = i
    return event, context, holiday


def best_event_f1(
    score: np.ndarray, event: np.ndarray, observed: np.ndarray
) -> tuple[float, float]:
    """The best event F1 over thresholds of ``score``, and that threshold."""
    s = np.where(np.isnan(score), -np.inf, score)
    finite = s[np.isfinite(s)]
    if not finite.size:
        return 0.0, np.inf
    qs = np.quantile(finite, 1 - np.geomspace(1e-4, 0.05, 30))
    f1 = [event_scores(s >= q, event, observed)["f1"] for q in qs]
    return max(f1), float(qs[int(np.argmax(f1))])


def recall_by_kind(flag: np.ndarray, event: np.ndarray, observed: np.ndarray,
                   kinds: np.ndarray) -> dict[str, float]:  # fmt: skip
    """The share of each anomaly kind's events (``kinds[event id]``) with a flag inside."""
    seen = np.unique(event[(event >= 0) & observed])
    hit = np.isin(seen, np.unique(event[flag & (event >= 0)]))
    return {str(k): round(float(hit[kinds[seen] == k].mean()), 3) for k in np.unique(kinds[seen])}


def evaluate(score: np.ndarray, flag: np.ndarray, event: np.ndarray, context: np.ndarray,
             holiday: np.ndarray, observed: np.ndarray, dow: np.ndarray, cluster: np.ndarray,
             after_holiday: np.ndarray, kinds: np.ndarray) -> dict:  # fmt: skip
    usable = observed & ~context
    raw, flag = flag, flag & usable
    score = np.where(usable, score, np.nan)
    at_rate = event_scores(flag, event, observed)
    clean = usable & (event < 0)
    rates = {}
    for c in np.unique(cluster):
        for d in range(7):
            cell = clean & (cluster[:, None] == c) & (dow[None, :] == d)
            if cell.sum() >= 480:  # 20 series-days at least
                rates[f"{c} {'MTWTFSS'[d]}{d}"] = float(flag[cell].mean())
    worst = max(rates, key=rates.get) if rates else None
    # the bar: the worst weekday over every cluster (the cell above is stricter)
    on_day = {d: clean & (dow[None, :] == d) for d in range(7)}
    days = {"MTWTFSS"[d] + str(d): float(flag[cell].mean()) for d, cell in on_day.items()
            if cell.any()}  # fmt: skip
    worst_day = max(days, key=days.get) if days else None
    hol = observed & holiday & (event < 0)
    after = clean & after_holiday[None, :]
    nights = range(flag.shape[1] // 24)
    night_rate = [float(flag[:, d * 24 : d * 24 + 24][clean[:, d * 24 : d * 24 + 24]].mean())
                  if clean[:, d * 24 : d * 24 + 24].any() else None for d in nights]  # fmt: skip
    # the worst single night of the 7 after the holiday (the first, whose support it is)
    after_nights = [night_rate[d] for d in nights
                    if after_holiday[d * 24 : d * 24 + 24].all() and night_rate[d] is not None]  # fmt: skip
    best, cut = best_event_f1(score, event, observed)
    return {
        "f1_at_rate": at_rate["f1"],
        "precision_at_rate": at_rate["precision"],
        "recall_at_rate": at_rate["recall"],
        # the best over score thresholds and the method's own flags (an operating point too)
        "best_f1": max(best, at_rate["f1"]),
        # which kinds of anomaly the method finds at its best threshold
        "recall_by_kind": recall_by_kind(np.nan_to_num(score, nan=-np.inf) >= cut, event, observed, kinds),
        "pr_auc": pr_auc(np.where(clean | (event >= 0), score, np.nan), event >= 0),
        "clean_rate": float(flag[clean].mean()),
        "worst_cell": worst,
        "worst_cell_rate": rates[worst] if worst else float("nan"),
        "cell_rates": {k: round(v, 6) for k, v in rates.items()},
        "worst_weekday": worst_day,
        "worst_weekday_rate": days[worst_day] if worst_day else float("nan"),
        "holiday_rate": float(raw[hol].mean()) if hol.any() else float("nan"),
        "after_holiday_rate": float(flag[after].mean()) if after.any() else float("nan"),
        "after_holiday_worst_night": max(after_nights, default=float("nan")),
        "clean_rate_per_night": [None if r is None else round(r, 5) for r in night_rate],
    }  # fmt: skip


# ablation variants (``--ablate``): the product's stack with one part left out; each is
# (settings overrides, MetaConfig overrides)
VARIANTS = {
    "defaults": ({}, {}),
    **{f"no-{part}": ({}, {"without": (part,)}) for part in CALIBRATION_PARTS},
    "no-trim": ({}, {"trim": float("inf")}),  # no support point is ever beyond it
    "no-lag_median": ({"lag_periods": 1}, {}),
    "no-week_input": ({"week_lag_input": False}, {}),
    "no-own_history": ({"own_history": False}, {}),
    "no-warmup": ({"history_warmup_nights": 0}, {}),  # the first night without a history
    "no-history_clip": ({"history_clip": 0.0}, {}),  # a night's residuals enter as they are
    "no-hold": ({"hold_flagged": False}, {}),  # the night before's flags stay in the supports
    "k-period": ({"k_rule": "period"}, {}),  # not a part: K = one period (4 weeks' data)
    "level": ({"relative_to_lag": False}, {}),  # not a part: level targets
    "calendar": ({}, {}),  # not a part: the holiday known (``Settings.holidays``; run_family)
}


def run_tsmeta(settings_kw: dict, config_kw: dict, as_of: date, last: date):  # noqa: ANN201
    """Train on the weeks before ``as_of`` and replay every later night: the scored frame."""
    settings = load_settings(**settings_kw)
    trained = jobs.train_models(settings, as_of, "bench", None, **config_kw)
    failed = {c: r["error"] for c, r in trained.items() if "error" in r}
    if failed:
        raise RuntimeError(f"training failed: {failed}")
    frames = [f.select("series_id", "ts", "surprise", "flag", "event_id", "basis", "cluster_id")
              for _, f, _ in jobs.replay(settings, as_of, last, "bench", keep="all")]  # fmt: skip
    return pl.concat(frames).with_columns(pl.col("series_id").cast(pl.String))


def run_family(family: str, args: argparse.Namespace, work: Path) -> dict:
    start = date(2026, 9, 7)  # a Monday
    days = 7 * args.weeks
    root = work / family / "dataset"
    t = time.perf_counter()
    write_synthetic_dataset(root, args.series, "h", days, start, args.seed, args.anomaly_rate,
                            family=family)  # fmt: skip
    base_kw = {"data_dir": str(work / family), "dataset_path": str(root),
               **({"k": args.k} if args.k else {})}  # fmt: skip
    settings = load_settings(**base_kw)
    as_of = start + timedelta(days=7 * args.train_weeks)
    last = start + timedelta(days=days - 1)
    jobs.profile_series(settings, as_of, "bench")
    variants = ["defaults", *args.ablate]
    scored, seconds = {}, {}
    for name in variants:
        t_v = time.perf_counter()
        s_kw, c_kw = VARIANTS[name]
        if name == "calendar":  # the business family's holiday given as a known date
            s_kw = {"holidays": [start + timedelta(days=holiday_day(days, datetime(
                start.year, start.month, start.day)))]}  # fmt: skip
        scored[name] = run_tsmeta(base_kw | s_kw, c_kw, as_of, last)
        seconds[name] = round(time.perf_counter() - t_v, 1)
        print(f"  {family} {name}: trained and replayed in {seconds[name]} s", file=sys.stderr)

    begin = datetime(start.year, start.month, start.day, tzinfo=UTC)
    panel = build_panel(read_window(root, start, last + timedelta(days=1)), "h")
    ids = panel.series_ids.astype(str)
    values = np.where(panel.mask, panel.values, np.nan).astype(np.float64)
    first = 24 * 7 * args.train_weeks  # the first replayed hour
    T = values.shape[1] - first
    eval_start = begin + timedelta(hours=first)

    naive = np.full_like(values, np.nan)
    naive[:, WEEK:] = values[:, :-WEEK]
    lags = np.stack([np.pad(values, ((0, 0), (w * WEEK, 0)), constant_values=np.nan)[:, : values.shape[1]]
                     for w in (1, 2, 3)])  # fmt: skip
    median3 = np.nanmedian(lags, axis=0)
    z_cut = normal_quantile(settings.false_alarm_rate)
    peers = {}
    for name, ref in (("seasonal naive + MAD", naive), ("3-week median + MAD", median3)):
        z = peer_z(values, ref)[:, first:]
        peers[name] = (z, z > z_cut)
    if args.mstl:
        t_m = time.perf_counter()
        z = mstl_z(values, first)
        peers["MSTL interval"] = (z, z > z_cut)
        seconds["MSTL interval"] = round(time.perf_counter() - t_m, 1)
    t_m = time.perf_counter()
    z = discord_z(values, first)  # one-sided: its cut leaves the whole rate on one tail
    peers["matrix profile (STUMPY)"] = (z, z > normal_quantile(2 * settings.false_alarm_rate))
    seconds["matrix profile (STUMPY)"] = round(time.perf_counter() - t_m, 1)

    labels = read_labels(root).with_columns(pl.col("series_id").cast(pl.String))
    event, context, holiday = _label_grids(labels, ids, eval_start, T)
    observed = ~np.isnan(values[:, first:])
    hours = np.arange(T)
    dow = ((eval_start.weekday() + (hours // 24)) % 7).astype(np.int64)
    profile = read_profile(jobs.engine_for(settings), ("series_id", "cluster_id"))
    cl = dict(zip(profile["series_id"].cast(pl.String).to_list(), profile["cluster_id"].to_list(),
                  strict=True))  # fmt: skip
    cluster = np.array([cl.get(s, "unprofiled") for s in ids])
    hol_hours = np.nonzero(holiday.any(axis=0))[0]
    after_holiday = np.zeros(T, dtype=bool)
    if hol_hours.size:
        after_holiday[hol_hours.max() + 1 : hol_hours.max() + 1 + 7 * 24] = True

    out = {"series": len(ids), "nights": (last - as_of).days + 1, "events": int(np.unique(event[event >= 0]).size),
           "seconds": seconds, "total_seconds": round(time.perf_counter() - t, 1),
           "clusters": sorted(set(cluster.tolist())), "methods": {}, "ablation": {}}  # fmt: skip
    kinds = labels.get_column("kind").to_numpy().astype(str)
    common = (event, context, holiday, observed, dow, cluster, after_holiday, kinds)
    for name in variants:
        frame = scored[name]
        res = evaluate(_grid(frame, ids, eval_start, T, "surprise"),
                       _grid(frame, ids, eval_start, T, "flag") == 1, *common)  # fmt: skip
        # shared events: how many, and the share of the holiday's flags that are common-mode
        member = _grid(frame.with_columns(pl.col("event_id").is_not_null().cast(pl.Float64).alias("_m")),
                       ids, eval_start, T, "_m") == 1  # fmt: skip
        flagged = (_grid(frame, ids, eval_start, T, "flag") == 1) & observed
        on_holiday = flagged & holiday & (event < 0)
        res["shared_events"] = int(frame.get_column("event_id").drop_nulls().n_unique())
        res["holiday_flags_in_events"] = (float(member[on_holiday].mean()) if on_holiday.any()
                                          else float("nan"))  # fmt: skip
        res["clean_flags_in_events"] = float(member[flagged & ~context & (event < 0)].mean())
        # how each series-night was forecast: the share whose adaptation fell back to the base
        nights = frame.group_by("series_id", pl.col("ts").dt.date()).agg(
            pl.col("basis").first(), pl.col("cluster_id").first())  # fmt: skip
        fell = nights.group_by("cluster_id").agg((pl.col("basis") == "fallback").mean())
        res["fallback_share"] = float((nights["basis"] == "fallback").mean())
        res["fallback_worst_cluster"] = float(fell["basis"].max()) if fell.height else float("nan")
        if name == "defaults":
            out["methods"]["tsmeta"] = res
        else:
            out["ablation"][name] = res
    for name, (z, flag) in peers.items():
        out["methods"][name] = evaluate(z, flag, *common)
    return out


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else (f"{x:.2e}" if 0 < abs(x) < 0.01 else f"{x:.3f}")
    return str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--families", nargs="+", default=["default", "business", "heavy"])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--train-weeks", type=int, default=3)
    ap.add_argument("--anomaly-rate", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=None, help="TSMETA_K (default: the product's)")
    ap.add_argument("--ablate", nargs="*", default=[], choices=[v for v in VARIANTS if v != "defaults"],
                    help="also run the product with each of these parts left out (the ablation)")  # fmt: skip
    ap.add_argument("--mstl", action="store_true",
                    help="also the MSTL interval peer (statsforecast, refit weekly: about 10 "
                         "minutes a family of 1,000 series on 2 cores)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    results = {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "families": {},
    }
    with tempfile.TemporaryDirectory(prefix="tsmeta-families-") as tmp:
        for family in args.families:
            results["families"][family] = run_family(family, args, Path(tmp))
    cols = ("best_f1", "f1_at_rate", "pr_auc", "clean_rate", "worst_weekday_rate",
            "worst_cell_rate", "worst_cell", "holiday_rate", "after_holiday_rate",
            "after_holiday_worst_night", "fallback_share")  # fmt: skip
    for family, res in results["families"].items():
        print(f"\n{family}: {res['series']} series, {res['nights']} nights replayed, {res['events']} events "
              f"(configured rate 1e-3; {res['total_seconds']} s)")  # fmt: skip
        print("| method | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        rows = {**res["methods"], **{f"tsmeta {v}": m for v, m in res["ablation"].items()}}
        for name, m in rows.items():
            print(f"| {name} | " + " | ".join(_fmt(m.get(c, "")) for c in cols) + " |")
        kinds = sorted({k for m in rows.values() for k in m["recall_by_kind"]})
        print("\nrecall by kind at each method's best threshold")
        print("| method | " + " | ".join(kinds) + " |")
        print("|---|" + "---:|" * len(kinds))
        for name, m in rows.items():
            print(
                f"| {name} | "
                + " | ".join(_fmt(m["recall_by_kind"].get(k, float("nan"))) for k in kinds)
                + " |"
            )
        m = res["methods"]["tsmeta"]
        print(
            f"tsmeta's forecasts that fell back to the base forecast: {_fmt(m['fallback_share'])} of "
            f"series-nights (worst cluster {_fmt(m['fallback_worst_cluster'])})"
        )
        print(f"tsmeta's shared events: {m['shared_events']} over the replayed nights; flags in them: "
              f"{_fmt(m['holiday_flags_in_events'])} of the holiday's, {_fmt(m['clean_flags_in_events'])} "
              "of those on clean points")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
