"""Sync engine: outbox batching, change-threshold trigger, rate budget, retry, cursors."""
