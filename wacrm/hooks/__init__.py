"""REST-hook subscribers (Zapier style) for the events rules emit.

A rule's ``emit_event`` (or ``hand_over``) writes a ``rule_events`` row in the rule's own
transaction; this room carries those rows to the URLs that subscribed to them:

- :mod:`~wacrm.hooks.subscriptions`: subscribe (validated URL and event name, a fresh secret),
  list, unsubscribe, disable;
- :mod:`~wacrm.hooks.fanout`: one ``hook_deliveries`` row per (subscription, event), exactly once;
- :mod:`~wacrm.hooks.delivery`: the signed POST, what each answer means, retries and dead
  letters (the signature scheme and the receiver's recipe are in its docstring);
- :mod:`~wacrm.hooks.targets`: public addresses only (no request forgery into the network),
  checked when subscribing and, pinned, at every delivery;
- :mod:`~wacrm.hooks.worker`: :class:`HookDeliveryWorker`, the background worker;
- :mod:`~wacrm.hooks.api`: ``/api/hooks`` (bearer token); :mod:`~wacrm.hooks.cli`: ``wacrm hooks``.

May import: config, store, rules (the events rules emit), sync.retry (the one retry policy),
workers.threaded.
"""
