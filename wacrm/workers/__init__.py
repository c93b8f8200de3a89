"""Background workers that move data along the path: inbox processor and outbox senders."""
