"""The durable store: schema, migrations, accounts, inbox, outboxes, cursors."""

from wacrm.store.engine import StoreError, create_store_engine, migrate, normalize_url
from wacrm.store.schema import metadata

__all__ = ["StoreError", "create_store_engine", "metadata", "migrate", "normalize_url"]
