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

from tsmeta.config_places import PlacesSettings
from tsmeta.frequency import normalise_freq, steps_per_day
from tsmeta.meta import ALGORITHMS

__all__ = [
    "Settings",
    "load_settings",
    "normalise_freq",
]


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


class Settings(PlacesSettings):
    model_config = SettingsConfigDict(env_prefix="TSMETA_", extra="forbid")

    # the descriptions are docs/settings.md (``python -m tsmeta.settings_doc``; tested);
    # where things are (paths, the database, Ray): ``tsmeta.config_places``
    # --- the data's step and what derives from it
    freq: str = Field(
        "h",
        description=(
            "The data's step: any fixed step from one minute to one day that divides a day "
            "(`1min`, `5min`, `15min`, `h`, `d`; spellings such as `5m`, `5T`, `1h`, `D` are "
            "accepted). One dataset has one step. K, the horizon and the candidate periods "
            "derive from it."
        ),
    )
    k: int | None = Field(
        None,
        ge=2,
        description=(
            "Support points each series adapts from each night. Unset: one day of steps "
            "(24 hourly, 288 at 5 minutes); daily data 28."
        ),
    )
    k_rule: Literal["day", "period"] = Field(
        "day",
        description=(
            "`day`: every cluster adapts from `k` points. `period`: a cluster adapts from at "
            "least one period of its own (a weekly cluster from its last week; aperiodic ones "
            "from `k`), at most `k_max`, once its training window holds `lag_periods` + 1 "
            "periods (4 weeks for a weekly cluster; from `k` before): better detection on a "
            "28-day window, twice the nightly time at 2M hourly series (docs/decisions.md). "
            "Takes effect at `train`."
        ),
    )
    k_max: int = Field(2016, ge=2, description="The cap on K of `k_rule=period`.")
    horizon: int | None = Field(
        None,
        ge=1,
        description=("Points scored per night. Unset: one day of steps (daily data: 1)."),
    )
    history_days: int | None = Field(
        None, ge=2, description=("Days read for profiling. Unset: 14 (daily data: 70).")
    )
    train_days: int | None = Field(
        None,
        ge=2,
        description="Days of the meta-training window. Unset: 28, four weekends (daily data: 365).",
    )
    candidate_periods: list[int] | None = Field(
        None,
        description=(
            "Periods, in steps, that profiling tests. Unset: a day and a week of steps "
            "(daily data: 7)."
        ),
    )
    min_acf: float = Field(
        0.3,
        description="Autocorrelation a candidate period needs before a series is called periodic.",
    )
    max_cluster_size: int = Field(
        100_000,
        ge=1,
        description=("Period groups larger than this are split by the shape of their period."),
    )
    read_chunk_rows: int = Field(
        50_000_000, ge=1, description=("Rows read at once; bounds peak memory of every step.")
    )
    # --- meta-learning
    algorithm: Literal[ALGORITHMS] = Field(
        "ridge",
        description=(  # type: ignore[valid-type]
            "The meta-learner. `ridge`: meta-learned hidden layers shared by the cluster, each "
            "series' output layer solved in closed form. `maml`, `fomaml`, `anil`, `metasgd`: "
            "gradient-step adaptation; `pretrain`: joint fit then fine-tuning (docs/decisions.md)."
        ),
    )
    hidden: int = Field(40, description="Width of the forecaster's hidden layers.")
    relative_to_lag: bool = Field(
        True,
        description=(
            "Forecast the change from the lagged input (the median of the same phase over "
            "`lag_periods` periods: a robust seasonal naive forecast, plus a learned and "
            "adapted correction) instead of the level."
        ),
    )
    week_lag_input: bool = Field(
        True,
        description=(
            "Models of a daily period also read the value a week before each point, so that a "
            "Monday adapted from a weekend is not forecast as a weekend day."
        ),
    )
    lag_periods: int = Field(
        3,
        ge=1,
        description=(
            "The lagged inputs are the median of the same phase over this many recent periods, "
            "so that one unusual week (a holiday, an outage) is not read as the normal the "
            "week after (a period left out, a gap or an aperiodic cluster's shared event, is "
            "replaced by the one before it; a periodic cluster's shared events and known "
            "holidays are read with each series' factor over them divided out); 1: the most "
            "recent value alone. Takes effect at `train`."
        ),
    )
    inner_steps: int = Field(
        5, ge=1, description=("Gradient steps of nightly adaptation (not used by `ridge`).")
    )
    inner_lr: float = Field(
        0.1, gt=0, description=("Step size of those steps; for `ridge`, the initial penalty.")
    )
    meta_batch: int = Field(32, ge=1, description="Tasks per outer step of meta-training.")
    meta_steps: int = Field(
        300, ge=1, description="Outer steps per cluster (early stopping may end sooner)."
    )
    meta_lr: float = Field(1e-3, gt=0, description="Outer learning rate (Adam).")
    train_series_per_cluster: int = Field(
        20_000,
        ge=2,
        description=("Series sampled per cluster for meta-training (tasks, not every series)."),
    )
    seed: int = Field(0, description="Seed of sampling, initialisation and clustering.")
    # --- nights
    timezone: str = Field(
        "UTC",
        description=("The zone whose calendar day is the default night (the data itself is UTC)."),
    )
    night_lag_days: int = Field(
        1,
        ge=0,
        description=(
            "A run without a night scores today minus this many days (1: yesterday; 2 waits a "
            "day longer for late data)."
        ),
    )
    min_series_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "A night is scored only when at least this share of the profiled series have a "
            "point in it; otherwise the run fails, naming the shortfall, and writes nothing."
        ),
    )
    # --- scoring
    false_alarm_rate: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description=(
            "Two-sided tail probability below which a point is flagged: the share of clean "
            "points flagged, by calibration."
        ),
    )
    chunk_series: int = Field(
        8192,
        ge=1,
        description="Series adapted at once in one batched computation (on a GPU, 65,536 or more).",
    )
    read_needed_days: bool = Field(
        True,
        description=(
            "Nightly scoring reads only the days its models read (the support, the night and "
            "their lags), not every day of the window between them; the same rows either way."
        ),
    )
    event_min_share: float = Field(
        0.05,
        gt=0,
        le=1,
        description=(
            "A step in which at least this share of a cluster's scored series are flagged the "
            "same way is part of one shared event (a holiday, an upstream outage)."
        ),
    )
    event_min_series: int = Field(
        5,
        ge=1,
        description="A shared event also needs at least this many series flagged in the step.",
    )
    holidays: list[date] = Field(
        default_factory=list,
        description=(
            "Known holidays (`TSMETA_HOLIDAYS='[\"2026-12-25\"]'`): shared events on them are "
            "of kind `holiday` (expected), not `shared`, and with `own_history` later nights "
            "read their days (UTC) as shared events: with each series' factor over them "
            "divided out where the cluster has a period, else left out."
        ),
    )
    own_history: bool = Field(
        True,
        description="Flag a point only if also rare against its series' residuals of earlier "
        "nights (their mean and standard deviation, kept in `data_dir/history`; the larger "
        "tail probability, times its cluster's factor from earlier nights that gives back "
        "the rate this second opinion takes away), and mark alerts (off: nights neither "
        "read nor save it; `alert` is NULL).",
    )
    history_clip: float = Field(
        4.0,
        ge=0,
        description="A night's residuals enter its series' own history clipped to this many "
        "of the history's standard deviations, unless the series was flagged the night "
        "before too: one anomaly does not widen its scale for weeks, a change that goes on "
        "does. 0: as they are.",
    )
    hold_flagged: bool = Field(
        True,
        description="With `own_history`, the points a series flagged on a night (fewer than "
        "half of that night's, the series not flagged the night before) are unobserved in "
        "what it adapts from the next night (its support, lag medians and veto): a spike or "
        "a few hours' shift is not its normal. Flagged on more, or two nights running, they "
        "are kept: a new level is learned.",
    )
    history_warmup_nights: int = Field(
        7,
        ge=0,
        description="Where no residual history is saved before a night (a deployment's first "
        "night), build it first by scoring this many nights before it (no rows written; "
        "nights without data are skipped) and save it as the state after the last of them: "
        "a week holds every weekday. That night costs this many nights more once; 0: judged "
        "by the cluster's tails alone.",
    )
    causal: bool = Field(
        False,
        description=(
            "Each point's score reads no later point of the night (NAB's rule; runs during the "
            "day): window medians trail the point, isolation and onset are left out (and the "
            "models trained with it are calibrated without them)."
        ),
    )
    score_threads: int | None = Field(
        None,
        ge=0,
        description=(
            "torch threads of in-process scoring on the CPU; 0: torch's default. Unset: 1 when "
            "every model adapts its output layer only (`ridge`, `anil`), else torch's default."
        ),
    )
    score_workers: int | None = Field(
        None,
        ge=1,
        description=(
            "Batches scored at once in-process, each on its own thread. Unset: one per core "
            "when scoring runs on one torch thread on the CPU, else 1."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "Where nightly adaptation runs: `auto` takes a CUDA GPU when torch sees one "
            "(with `executor=ray`: when the cluster has GPUs), else the CPU."
        ),
    )

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
