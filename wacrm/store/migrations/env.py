"""Alembic environment: runs on the connection handed in by ``wacrm.store.engine.migrate``."""

from __future__ import annotations

from alembic import context

from wacrm.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via wacrm.store.migrate
    raise RuntimeError("run migrations through wacrm.store.migrate(engine)")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
