"""``tsmeta plot`` and ``tsmeta report``: a series with its forecast band and flagged points
(PNG), and the night's summary as one self-contained HTML file (plots inlined).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from tsmeta.config import Settings
from tsmeta.data.panel import freq_timedelta
from tsmeta.database_url import redact_url
from tsmeta.detect import BASIS, BASIS_MEANING, NOT_SCORED
from tsmeta.events import episodes
from tsmeta.explain import SeriesNight, latest_nightly_run, series_night

__all__ = ["plot_series", "render_plot", "write_report"]

_UP, _DOWN = "#d62728", "#1f77b4"


def render_plot(view: SeriesNight, width: float = 11.0, height: float = 3.6) -> bytes:
    """PNG bytes: history (grey), the night's forecast and band, flagged points by direction."""
    import matplotlib.pyplot as plt

    fig = draw(view, width, height)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def draw(view: SeriesNight, width: float = 11.0, height: float = 3.6):  # noqa: ANN201 - a Figure
    """The matplotlib Figure of :func:`render_plot` (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ts = view.ts.astype("datetime64[us]").astype(object)
    night_ts = view.night_ts.astype("datetime64[us]").astype(object)
    ax.plot(ts, view.value, color="0.35", lw=1.0, label="observed")
    # a series that was not scored (too few or stuck recent points) has no band to show:
    # drawing the forecast it was not judged by would suggest it had been
    scored = view.basis not in NOT_SCORED
    if scored:
        ax.fill_between(night_ts, view.lower, view.upper, color="tab:orange", alpha=0.25,
                        lw=0, label="forecast band")  # fmt: skip
        ax.plot(night_ts, view.forecast, color="tab:orange", lw=1.4, label="forecast")
    ax.axvline(night_ts[0], color="0.6", ls=":", lw=1)
    for direction, colour, marker in (("up", _UP, "^"), ("down", _DOWN, "v")):
        f = view.flags.filter(pl.col("direction") == direction)
        if f.height:
            x = f.get_column("ts").dt.replace_time_zone(None).to_list()
            ax.scatter(x, f.get_column("value").to_numpy(), color=colour, marker=marker,
                       s=70, zorder=5, edgecolor="black", lw=0.6,
                       label=f"flagged {direction} ({f.height})")  # fmt: skip
    n_flags = view.flags.height
    what = (f"{n_flags} flagged ({view.flags_from}), forecast basis {view.basis}" if scored
            else f"not scored: {BASIS_MEANING[view.basis]}")  # fmt: skip
    ax.set_title(
        f"{view.series_id}  -  cluster {view.cluster_id} (model v{view.model_version}), "
        f"{view.night}: {what}",
        fontsize=10, loc="left",
    )  # fmt: skip
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncols=5, frameon=False)
    shown = [view.value, view.lower, view.upper] if scored else [view.value]
    lo = np.nanmin([np.nanmin(v) for v in shown])
    hi = np.nanmax([np.nanmax(v) for v in shown])
    pad = 0.25 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - 0.1 * pad, hi + pad)  # room for the legend
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_series(
    settings: Settings, series_id: str, night: date, out: Path, history_days: int = 7
) -> Path:
    """Write the PNG of one series on ``night`` to ``out``; returns the path."""
    (view,) = series_night(settings, [series_id], night, history_days)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(render_plot(view))
    return out


def write_report(
    settings: Settings, night: date, out: Path, top: int = 10, history_days: int = 7
) -> dict:
    """One self-contained HTML file for ``night``: the run's summary, per-cluster counts,
    timings, model versions, and the plots of the series with the top anomalies."""
    from tsmeta.jobs import engine_for
    from tsmeta.store.queries import query_anomalies, query_events

    engine = engine_for(settings)
    run = latest_nightly_run(engine, night)
    if run is None:
        raise LookupError(
            f"no finished nightly run for {night}: run `tsmeta nightly --night {night}` first"
        )
    counts = run.get("counts") or {}
    anomalies = query_anomalies(engine, night, night)
    shared = query_events(engine, night, night)
    # the series' own anomalies, one per episode; common-mode points are their event's
    own = episodes(anomalies.filter(pl.col("event_id").is_null()), freq_timedelta(settings.freq))
    top_series = own.get_column("series_id").unique(maintain_order=True).head(top).to_list()
    views = series_night(settings, top_series, night, history_days) if top_series else []
    plots = [(v, base64.b64encode(render_plot(v)).decode("ascii")) for v in views]
    page = _page(settings, night, run, counts, anomalies, own, shared, plots)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return {"path": str(out), "flagged": anomalies.height, "plots": len(plots),
            "run_id": run["run_id"], "status": run["status"]}  # fmt: skip


def _esc(x: object) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list[object]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="n">{_esc(c)}</td>' if i in numeric else f"<td>{_esc(c)}</td>"
            for i, c in enumerate(r)
        ) + "</tr>"
        for r in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(settings, night, run, counts, anomalies, own, shared, plots) -> str:  # noqa: ANN001
    clusters = counts.get("clusters", {})
    series = counts.get("series", 0)
    scored = counts.get("series_scored", 0)
    points = counts.get("points_scored", 0)
    flagged = counts.get("flagged", anomalies.height)
    rate = flagged / points if points else float("nan")
    summary = _table(
        ["night", "status", "series", "scored", "points scored", "flagged", "flag rate",
         "configured false-alarm rate", "seconds", "run id"],
        [[night, run["status"], f"{series:,}", f"{scored:,}", f"{points:,}", f"{flagged:,}",
          f"{rate:.3%}", f"{settings.false_alarm_rate:g}", counts.get("seconds", ""),
          run["run_id"]]],
        numeric={2, 3, 4, 5, 6, 8},
    )  # fmt: skip
    basis = counts.get("basis", {})
    basis_t = _table(list(basis), [[f"{v:,}" for v in basis.values()]], set(range(len(basis))))
    others = BASIS[1:]  # the bases other than "adapted", one column each
    per_cluster = _table(
        ["cluster", "series", "scored", "points", "flagged", "model version", *others, "error"],
        [[cid, f"{c.get('series', 0):,}", f"{c.get('scored', 0):,}", f"{c.get('points', 0):,}",
          f"{c.get('flagged', 0):,}", c.get("model_version", ""), *(c.get(b, "") for b in others),
          c.get("error", "")]
         for cid, c in sorted(clusters.items())],
        numeric=set(range(1, 6 + len(others))),
    )  # fmt: skip
    timings = {k: v for k, v in counts.items() if k.endswith("seconds")}
    timing_t = _table(list(timings), [list(timings.values())], set(range(len(timings))))
    events_t = _table(
        ["kind", "cluster", "start (UTC)", "end (UTC)", "direction", "series", "peak share",
         "points"],
        [[r["kind"], r["cluster_id"], str(r["start_ts"])[:16], str(r["end_ts"])[:16], r["direction"],
          f"{r['n_series']:,}", f"{r['peak_share']:.1%}", f"{r['n_points']:,}"]
         for r in shared.iter_rows(named=True)],
        numeric={5, 6, 7},
    ) if shared.height else "<p>No shared events this night.</p>"  # fmt: skip
    top_t = _table(
        ["series", "start (UTC)", "end (UTC)", "points", "peak (UTC)", "value", "forecast",
         "surprise", "direction", "severity", "cluster"],
        [[r["series_id"], str(r["start"])[:16], str(r["end"])[:16], r["points"],
          str(r["peak_ts"])[11:16], f"{r['value']:.3f}", f"{r['forecast']:.3f}",
          "" if r.get("surprise") is None else f"{r['surprise']:.1f}", r["direction"],
          r.get("severity") or "", r["cluster_id"]]
         for r in own.head(25).iter_rows(named=True)],
        numeric={3, 5, 6, 7},
    ) if own.height else "<p>No anomalies of single series were flagged this night.</p>"  # fmt: skip
    figures = "".join(
        f'<figure><img alt="{_esc(v.series_id)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_esc(v.series_id)}: {v.flags.height} flagged point(s), cluster "
        f"{_esc(v.cluster_id)}, model v{v.model_version}, basis {_esc(v.basis)}</figcaption></figure>"
        for v, b64 in plots
    )  # fmt: skip
    problems = []
    if counts.get("no_model_series"):
        problems.append(
            f"{counts['no_model_series']:,} series in clusters without a model (run `tsmeta train`)"
        )
    if counts.get("unprofiled_series"):
        problems.append(
            f"{counts['unprofiled_series']:,} series with data but no profile (run `tsmeta profile`)"
        )
    for cid in counts.get("failed_clusters", []):
        problems.append(f"cluster {cid} failed: {clusters.get(cid, {}).get('error', '')}")
    warn = "".join(f"<li>{_esc(p)}</li>" for p in problems)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tsmeta report {night}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }} td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
.warn {{ color: #a33; }}
</style></head><body>
<h1>tsmeta: the night of {night}</h1>
<p>Database <code>{_esc(redact_url(settings.database_url))}</code>, run started {_esc(run.get("started_at"))},
finished {_esc(run.get("finished_at"))}.</p>
{summary}
{f'<ul class="warn">{warn}</ul>' if warn else ""}
<h2>Forecast basis</h2>
<p>{_esc("; ".join(f"{b}: {m}" for b, m in BASIS_MEANING.items()))}. Series with basis
{" or ".join(NOT_SCORED)} are not scored that night.</p>
{basis_t}
<h2>Per cluster</h2>
{per_cluster}
<h2>Timings (seconds)</h2>
{timing_t}
<h2>Shared events</h2>
<p>Steps in which a large share of a cluster's scored series were flagged the same way
(<code>TSMETA_EVENT_MIN_SHARE</code>, <code>TSMETA_EVENT_MIN_SERIES</code> when the night was
scored): a holiday ("holiday" when its date is on the configured calendar), an upstream
outage. Their
{sum(shared.get_column("n_points").to_list()) if shared.height else 0:,} flagged points are
common-mode and are not listed again below.</p>
{events_t}
<h2>Top anomalies</h2>
<p>One row per episode: consecutive flagged points of a series that deviate the same way
(from start to end, the step after the last point; the peak's time, value and forecast;
severity the worst of the episode).</p>
{top_t}
<p>surprise: -log10 of the probability of a residual at least this large on a normal night
(3: one in a thousand).</p>
<h2>The series of the top anomalies</h2>
<p>Grey: observed; orange: the night's forecast and its band (where a single point is
flagged at the configured false-alarm rate); red up / blue down triangles: flagged points. A
flagged point inside the band is part of a sustained deviation: most points of the 5 or 12
hours around it strayed the same way.</p>
{figures or "<p>Nothing to plot.</p>"}
</body></html>
"""
