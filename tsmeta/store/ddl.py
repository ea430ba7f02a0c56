"""The schema as DDL text for a dialect (``sql/schema.postgresql.sql`` is generated from it)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from tsmeta.store.schema import metadata

__all__ = ["postgresql_ddl", "ddl_for"]

_HEADER = """\
-- The anomaly store's tables as PostgreSQL sees them.
-- Generated from tsmeta/store/schema.py; tests/test_sql.py fails when the two drift.
-- Regenerate: python -c 'from tsmeta.store.ddl import postgresql_ddl; print(postgresql_ddl(), end="")' > sql/schema.postgresql.sql
"""


def ddl_for(dialect_name: str) -> str:
    dialect = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}[dialect_name]
    parts = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
    text = "\n\n".join(parts) + "\n"
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def postgresql_ddl() -> str:
    return _HEADER + "\n" + ddl_for("postgresql")
