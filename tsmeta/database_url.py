"""Database URLs: the driver tsmeta installs, and a URL fit to show."""

from __future__ import annotations

__all__ = ["normalise_database_url", "redact_url"]


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


def redact_url(url: str) -> str:
    """A database URL without its password (for messages and reports)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show nothing of it
        return "(the database URL)"
