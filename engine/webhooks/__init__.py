"""Webhooks: signed POSTs of decision and review events to the provider's endpoints (docs/console.md).

`outbox` queues events in Redis (the sink's after-write hook and the console fill it); the delivery
worker sends them, never on the scoring path.
"""
