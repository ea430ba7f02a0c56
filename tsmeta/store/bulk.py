"""Bulk inserts in the caller's transaction: COPY on PostgreSQL, the driver's batched
executemany on SQLite (the store's two databases)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa

INSERT_BATCH = 20_000  # rows per executemany (SQLite)
_COPY_BATCH = 200_000  # rows per CSV chunk streamed into COPY (PostgreSQL)


def now() -> datetime:
    return datetime.now(UTC)


def bulk_insert(
    conn: sa.Connection, table: sa.Table, rows: pl.DataFrame,
    progress: Callable[[int], object] | None = None,
) -> None:  # fmt: skip
    """Bulk insert a frame whose columns are ``table``'s: COPY on PostgreSQL, the driver's
    batched executemany of plain tuples on SQLite (the store's two databases: its merges
    use their ON CONFLICT). Runs inside the caller's transaction; ``progress(n)`` after
    each batch of n rows."""
    if rows.height == 0:
        return
    if conn.dialect.name == "postgresql":
        cols = ", ".join(rows.columns)
        raw = conn.connection.driver_connection  # psycopg: same connection, same transaction
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table.name} ({cols}) FROM STDIN (FORMAT csv)") as copy,
        ):
            for first in range(0, rows.height, _COPY_BATCH):
                part = rows.slice(first, _COPY_BATCH)
                copy.write(part.write_csv(include_header=False))
                if progress is not None:
                    progress(part.height)
        return
    raw = conn.connection.driver_connection  # sqlite3: same connection, same transaction
    cols = rows.columns
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    cursor = raw.cursor()
    try:
        for first in range(0, rows.height, INSERT_BATCH):
            part = _sqlite_values(rows.slice(first, INSERT_BATCH))
            cursor.executemany(sql, part.iter_rows())
            if progress is not None:
                progress(part.height)
    finally:
        cursor.close()


# how SQLAlchemy's SQLite dialect stores DateTime and Date values (text; a zone's fields as
# they are): rows written by the driver directly read back exactly as its own would
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%6f"
_SQLITE_DATE = "%Y-%m-%d"


def _sqlite_values(part: pl.DataFrame) -> pl.DataFrame:
    """``part`` with its timestamps and dates as the text SQLAlchemy's SQLite dialect stores."""
    return part.with_columns(
        [pl.col(c).dt.strftime(_SQLITE_DATETIME) for c, t in part.schema.items()
         if isinstance(t, pl.Datetime)]
        + [pl.col(c).dt.strftime(_SQLITE_DATE) for c, t in part.schema.items() if t == pl.Date]
    )  # fmt: skip
