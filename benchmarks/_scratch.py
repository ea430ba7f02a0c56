"""A scratch PostgreSQL database for a benchmark run (shared by the benchmark scripts)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa


def scratch_postgres(server_url: str) -> tuple[str, Callable[[], None]]:
    """Create an empty database on the server at ``server_url``; returns (its URL, drop)."""
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"tsmeta_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()

    return admin.url.set(database=name).render_as_string(hide_password=False), drop
