"""Alembic environment for the anomaly store.

``tsmeta.store.migrate.upgrade`` passes an open connection in ``config.attributes``. Run
from the alembic CLI instead, it connects to ``sqlalchemy.url`` or, when that is unset,
to the configured ``TSMETA_DATABASE_URL``. Batch mode is on so SQLite can alter tables.
"""

from alembic import context

from tsmeta.store.schema import metadata

config = context.config


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    import sqlalchemy as sa

    from tsmeta.config import load_settings

    url = config.get_main_option("sqlalchemy.url") or load_settings().database_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
