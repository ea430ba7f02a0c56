"""Where things are: the settings that place tsmeta's data, database, models and Ray
(the first fields of ``tsmeta.config.Settings``, which derives the unset paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tsmeta.database_url import normalise_database_url

__all__ = ["PlacesSettings"]


class PlacesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TSMETA_", extra="forbid")

    # --- where things are
    data_dir: Path = Field(
        Path("tsmeta-data"),
        description=(
            "Root of everything the embedded setup writes: the dataset, the SQLite database, "
            "the models, reports."
        ),
    )
    dataset_path: Path | None = Field(
        None, description=("The date-partitioned Parquet dataset. Unset: `data_dir/dataset`.")
    )
    database_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the anomaly store: SQLite or PostgreSQL "
            "(`postgresql+psycopg://user:pw@host:5432/db`; `postgres://` URLs use psycopg 3). "
            "Unset: the SQLite file `data_dir/tsmeta.db`."
        ),
    )
    model_dir: Path | None = Field(
        None,
        description="The meta-model store (one file per cluster and version). Unset: `data_dir/models`.",
    )
    ray_address: str | None = Field(
        None,
        description=(
            "Ray cluster for meta-training (and scoring with `executor=ray`): `auto`, "
            "`ray://host:10001`, `host:port`. Unset: a private local Ray instance."
        ),
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description=(
            "Where nightly scoring runs: `local` (in-process, a thread pool) or `ray` (one Ray "
            "task per batch). Meta-training always goes through Ray."
        ),
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        return None if v is None else normalise_database_url(v)
