"""Schema migrations (Alembic) run from Python: ``tsmeta db upgrade`` and every engine_for().

A database created before migrations existed (the foundation's ``create_all``, which is
exactly revision 0001) is stamped 0001 and then upgraded, keeping its rows.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ["MIGRATIONS", "alembic_config", "upgrade", "current_revision", "head_revision"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_FOUNDATION_TABLES = {"runs", "series_profile", "clusters", "models", "anomalies"}


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    """Upgrade the database in place to ``revision``; returns the revision reached."""
    with engine.begin() as conn:
        cfg = alembic_config(conn)
        tables = set(sa.inspect(conn).get_table_names())
        if "alembic_version" not in tables and _FOUNDATION_TABLES <= tables:
            command.stamp(cfg, "0001")  # made by create_all before migrations existed
        command.upgrade(cfg, revision)
    return current_revision(engine)
