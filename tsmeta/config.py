"""One typed settings object for the whole platform.

Sources, highest priority first: keyword arguments, environment variables ``TSMETA_*``,
a TOML file (``TSMETA_CONFIG=path``, else ``./tsmeta.toml`` when present), the defaults
below. Paths left unset derive from ``data_dir`` so a single variable relocates everything.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tsmeta.frequency import normalise_freq, steps_per_day
from tsmeta.meta import ALGORITHMS

__all__ = [
    "Settings",
    "load_settings",
    "normalise_freq",
    "normalise_database_url",
    "redact_url",
]


def normalise_database_url(url: str) -> str:
    """PostgreSQL URLs without a driver (``postgres://``, ``postgresql://``, as hosting
    services hand them out) use psycopg 3, the driver tsmeta installs; psycopg2 is not."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    if url.startswith(("postgres+psycopg2://", "postgresql+psycopg2://")):
        raise ValueError(
            "database URL uses the psycopg2 driver, which tsmeta does not install: write "
            "postgresql+psycopg://user:pw@host:5432/db (psycopg 3)"
        )
    return url


def _toml_path() -> Path | None:
    explicit = os.environ.get("TSMETA_CONFIG")
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(
                f"TSMETA_CONFIG points at {p}, which is not a file: fix the path or unset it"
            )
        return p
    local = Path("tsmeta.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TSMETA_", extra="forbid")

    data_dir: Path = Path("tsmeta-data")  # root of everything the embedded setup writes
    dataset_path: Path | None = None  # partitioned Parquet dataset; default data_dir/dataset
    database_url: str | None = None  # default: sqlite file data_dir/tsmeta.db
    model_dir: Path | None = None  # meta-model store; default data_dir/models
    ray_address: str | None = None  # None -> start a local Ray; "auto" or ray://… for a cluster
    executor: Literal["local", "ray"] = "local"  # where nightly scoring runs (training: always Ray)

    # the step of the data: any fixed step from one minute to one day that divides a day
    # ("1min", "5min", "15min", "h", "d"; tsmeta.frequency). K, horizon and candidate
    # periods default by it: below a day K = H = one day of steps, periods {day, week};
    # daily K=28, H=1, {7}. One night scores one day (H points).
    freq: str = "h"
    k: int | None = Field(None, ge=2)  # support points each series adapts from
    # "day": every cluster adapts from ``k`` points; "period": a cluster adapts from one
    # period of its own (a weekly cluster from its last week; aperiodic ones from ``k``),
    # at most ``k_max`` points (a week of minutes is 10,080). Takes effect at `train`
    k_rule: Literal["day", "period"] = "day"
    k_max: int = Field(2016, ge=2)
    horizon: int | None = Field(None, ge=1)  # points scored per night
    history_days: int | None = Field(None, ge=2)  # days read for profiling/scoring: 14 h, 70 d
    train_days: int | None = Field(None, ge=2)  # meta-training window: 28 h (4 weekends), 365 d

    candidate_periods: list[int] | None = None
    min_acf: float = 0.3  # autocorrelation a period needs before it is accepted
    max_cluster_size: int = Field(100_000, ge=1)  # period groups larger than this split by shape
    read_chunk_rows: int = Field(50_000_000, ge=1)  # rows read at once (bounds peak memory)

    # meta-learning
    # "ridge" (the default) shares meta-learned hidden layers across the cluster and solves
    # each series' output layer in closed form; "maml" adapts every layer nightly by
    # gradient steps (5x slower to score; ranks sustained anomalies of the generator's
    # corpus better); "anil" steps the output layer alone. Measured in benchmarks/README
    # ("The ridge head"); see tsmeta.meta.train
    algorithm: Literal[ALGORITHMS] = "ridge"  # type: ignore[valid-type]
    hidden: int = 40  # MLP width, as in the MAML paper's regression network
    # forecast the change from the most recent same-phase value (seasonal naive + a learned,
    # adapted correction) rather than the level: M4 Hourly MASE 0.917 against 1.4 (level)
    relative_to_lag: bool = False
    # hourly models of a daily period also take the value a week before each point as an
    # input (FeatureSpec.second_lag): from K recent points of a weekend a daily model
    # alone forecasts Monday as a weekend day. M4 Hourly, ridge per period, K = 168:
    # sMAPE / MASE 9.912 / 0.923 against 10.085 / 0.945 without (benchmarks/README)
    week_lag_input: bool = True
    # the lagged inputs (the value a period before, the week before) are the median of the
    # same phase over this many recent periods, so that one unusual week (a holiday, an
    # outage) is not read as the normal the week after; 1: the most recent value alone.
    # Scoring reads this many periods back (for weekly models: 3 weeks). Takes effect at
    # the next `train` (benchmarks/README, "Detection across families")
    lag_periods: int = Field(3, ge=1)
    inner_steps: int = Field(5, ge=1)  # gradient steps of nightly adaptation (not ridge's)
    inner_lr: float = Field(0.1, gt=0)  # step size of those steps; ridge: initial penalty
    meta_batch: int = Field(32, ge=1)  # tasks per outer step
    meta_steps: int = Field(300, ge=1)  # outer steps per cluster
    meta_lr: float = Field(1e-3, gt=0)
    train_series_per_cluster: int = Field(20_000, ge=2)  # sample cap: tasks, not all series
    seed: int = 0
    timezone: str = "UTC"  # the zone whose calendar days are the nights
    # the nightly job's default night (a schedule passes none): today in ``timezone`` minus
    # this many days; 1 scores yesterday, 2 waits a day longer for late data
    night_lag_days: int = Field(1, ge=0)
    # a night is scored only when at least this share of the profiled series have a point
    # in it; otherwise the run fails naming the shortfall and writes nothing (data late)
    min_series_share: float = Field(0.5, ge=0, le=1)

    # scoring
    false_alarm_rate: float = Field(1e-3, gt=0, lt=1)  # two-sided tail mass flagged on clean data
    chunk_series: int = Field(8192, ge=1)  # series per batched adaptation chunk
    # nightly scoring reads only the days its models read (the support, the night and
    # their lags a period and weeks back), not every day of the window between them; the
    # same rows either way (a test checks), fewer bytes read
    read_needed_days: bool = True
    # shared events (tsmeta.events): a step in which at least this share of a cluster's
    # scored series, and at least event_min_series of them, are flagged the same way (a
    # holiday, an upstream outage) is part of one event; its points are common-mode
    event_min_share: float = Field(0.05, gt=0, le=1)
    event_min_series: int = Field(5, ge=1)
    # known holidays (dates; TSMETA_HOLIDAYS='["2026-12-25", "2027-01-01"]'): events on them
    # are of kind "holiday" (expected), not "shared"
    holidays: list[date] = Field(default_factory=list)
    # each point's score reads no later point of the night (NAB's rule; runs during the
    # day): window medians trail the point, isolation and onset are left out, the veto
    # reads the point's own deviation (tsmeta.detect.score_day). The nightly default reads
    # the whole night, which catches more (benchmarks/README, "NAB")
    causal: bool = False
    # torch threads of in-process nightly scoring on the CPU; 0: torch's default (one per
    # core); unset: 1 when every model adapts its output layer only (ANIL: small elementwise
    # steps whose intra-op threads mostly spin while the next chunk is read), else torch's
    # default (MAML's batched matrix products do use them). Measured on 2M series, 2 cores:
    # ANIL the same wall time on 1 thread as on 2 with about a quarter less CPU; MAML 264 s
    # on 1 thread against 167 s on 2, for 12% less CPU (benchmarks/README)
    score_threads: int | None = Field(None, ge=0)
    # batches of in-process nightly scoring computed at once, each on its own Python thread
    # (torch releases the GIL inside its operations, so each takes a core); results are
    # collected in the order the batches were read. Unset: one per core when scoring runs
    # on one torch thread on the CPU (ridge, ANIL: see score_threads), else 1 (MAML's
    # matrix products already use every core; a GPU runs one batch at a time)
    score_workers: int | None = Field(None, ge=1)
    # where nightly adaptation runs: "auto" takes a CUDA GPU when torch sees one (with the
    # Ray executor: when the cluster has GPUs), else the CPU. On a GPU raise chunk_series
    # to 65536 or more (2M series scored at 0.9-1.06M series/s on an H100; 8192 is slower)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def torch_device(self) -> str:
        """The device nightly scoring computes on (``device`` resolved)."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "TSMETA_DEVICE=cuda but torch sees no CUDA GPU here: "
                "set TSMETA_DEVICE=auto (or cpu), or install a CUDA build of torch"
            )
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        return None if v is None else normalise_database_url(v)

    @field_validator("freq", mode="before")
    @classmethod
    def _freq(cls, v: str) -> str:
        return normalise_freq(v)

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if self.dataset_path is None:
            self.dataset_path = self.data_dir / "dataset"
        if self.model_dir is None:
            self.model_dir = self.data_dir / "models"
        spd = self.steps_per_day
        daily = spd == 1
        if self.k is None:
            self.k = 28 if daily else spd
        if self.horizon is None:
            self.horizon = spd
        if self.history_days is None:
            self.history_days = 70 if daily else 14
        if self.train_days is None:
            self.train_days = 365 if daily else 28
        if self.candidate_periods is None:
            self.candidate_periods = [7] if daily else [spd, 7 * spd]
        if self.database_url is None:
            self.database_url = f"sqlite:///{(self.data_dir / 'tsmeta.db').as_posix()}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @property
    def period_default(self) -> int:
        """Phase period used by series with no detected period."""
        return 7 if self.steps_per_day == 1 else self.steps_per_day

    @property
    def steps_per_day(self) -> int:
        return steps_per_day(self.freq)


def load_settings(**overrides: object) -> Settings:
    """Settings from env/TOML with explicit overrides on top (None values ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def redact_url(url: str) -> str:
    """A database URL without its password (for messages and reports)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show nothing of it
        return "(the database URL)"
