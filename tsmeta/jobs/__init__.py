"""The pipeline's steps as plain Python calls: read, compute, write.

Each function is one step of the nightly story and is what a Prefect task wraps (see
``pipelines/``); everything here runs without Prefect. The numerical work lives in
``periodicity``, ``clustering``, ``meta``, ``detect`` and ``scoring``; this package only
wires data in and results out: ``profile`` (periods and clusters), ``train`` (one model
per cluster, through ``tsmeta.execution``), ``score`` (a night's series, chunk by chunk,
routed to their cluster's model), ``history`` (each series' residual history between
nights), ``rows`` (a scored night as anomaly rows), ``night``
(events, writes, replays) and ``common`` (the database engine, which night, whether its
data arrived).
"""

from tsmeta.jobs.common import (
    NightDataMissing,
    default_night,
    engine_for,
    latest_date,
    night_bounds,
    require_night_data,
)
from tsmeta.jobs.night import find_events, read_night, replay, run_night, write_night
from tsmeta.jobs.profile import PROFILE_CELLS, profile_series
from tsmeta.jobs.rows import points_frame
from tsmeta.jobs.score import score_night
from tsmeta.jobs.threads import score_threads, score_workers
from tsmeta.jobs.train import k_for, meta_config, train_models

__all__ = [
    "engine_for",
    "points_frame",
    "profile_series",
    "train_models",
    "score_night",
    "score_threads",
    "score_workers",
    "run_night",
    "find_events",
    "replay",
    "write_night",
    "read_night",
    "latest_date",
    "night_bounds",
    "default_night",
    "NightDataMissing",
    "require_night_data",
    "meta_config",
    "k_for",
    "PROFILE_CELLS",
]
