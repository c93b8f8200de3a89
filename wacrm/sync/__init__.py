"""Sync engine: outbox batching, change-threshold trigger, rate budget, retry, cursors.

One job per module:

- ``trigger``: when to sync (changed share ≥ 5 %, full batch, urgent, webhook, baseline).
- ``retry``: the one retry policy (Retry-After, else full-jitter backoff; bounded).
- ``budget``: the per-account token bucket, corrected by rate-limit headers.
- ``http``: the HTTP choke point (budget + retry + error table) for connectors.
- ``outcomes``: per-record results of a batch → delete, reschedule or dead-letter.
- ``crm_ids``: record keys → store rows, to remember the CRM's ids.
- ``conflicts`` / ``mirror``: ownership and merge rules; CRM changes into the contact mirror.
- ``cursors``: bookmarks per (account, connector, object, direction).
- ``engine``: one run, both directions; ``worker``: the loop ``wacrm serve`` runs.
- ``webhooks``: CRM change webhooks → which account to read now (echoes ignored).
- ``status``: what ``wacrm sync status`` shows; ``commands``: what the CLI calls.
- ``sim_connector``: the connector for the CRM simulator in ``wacrm.sandbox.crm``.

The outbox worker itself is :class:`wacrm.workers.crm_outbox.CrmOutboxWorker`.
"""
