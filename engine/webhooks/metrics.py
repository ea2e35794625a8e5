"""The webhook delivery worker's Prometheus metrics, in a registry of their own (as the sink's are):
`antifraud hooks --metrics-port` serves them, and `antifraud serve`'s worker keeps them in memory.

A *delivery* is one event to one endpoint, finished once: delivered (a 2xx) or a dead letter. An
*attempt* is one POST of it. The outbox backlog is what the worker has not finished: entries never
read plus entries read and not yet acknowledged (some endpoint still waits for them).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: what ends a delivery
DELIVERY_OUTCOMES: Final = ("delivered", "dead_letter")
#: why a delivery became a dead letter: the receiver answered 410, every attempt failed, or the
#: endpoint left the endpoints file while the event waited for it
DEAD_REASONS: Final = ("gone", "attempts", "endpoint_removed")
#: an attempt's result: the answer's status class, or `error` when no answer came (timeout, refused)
ATTEMPT_RESULTS: Final = ("2xx", "3xx", "4xx", "5xx", "error")


def attempt_result(status: int | None) -> str:
    """The `result` label of an attempt answered `status` (None: no answer)."""
    if status is None or not 200 <= status < 600:
        return "error"
    return f"{status // 100}xx"


class HookMetrics:
    """Deliveries by outcome, attempts by result, dead letters by reason, the outbox's backlog, the
    retries waiting, whether this worker holds the delivery lock, and the latencies."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "antifraud_hooks_deliveries_total",
            "Deliveries (an event to an endpoint) finished, by outcome: delivered or dead_letter",
            ["outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "antifraud_hooks_attempts_total",
            "POSTs made, by result: the answer's status class, or error when none came",
            ["result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "antifraud_hooks_dead_letters_total",
            "Deliveries given up, by reason: gone (410), attempts (max attempts failed), endpoint_removed",
            ["reason"],
            registry=r,
        )
        self.backlog = Gauge(
            "antifraud_hooks_outbox_backlog",
            "Outbox entries not finished: never read, or read and waiting for an endpoint",
            registry=r,
        )
        self.retrying = Gauge(
            "antifraud_hooks_retrying", "Deliveries waiting for their next attempt", registry=r
        )
        self.holding = Gauge(
            "antifraud_hooks_lock_held",
            "1 while this worker holds the delivery lock (0: standby)",
            registry=r,
        )
        self.post_seconds = Histogram(
            "antifraud_hooks_post_seconds",
            "Time of one POST, to its answer or its failure",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "antifraud_hooks_delivery_seconds",
            "From an event's publication to its 2xx answer, retries included",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0),
            registry=r,
        )
        for outcome in DELIVERY_OUTCOMES:  # every series from the start: a rate over zero, not absent
            self.deliveries.labels(outcome)
        for reason in DEAD_REASONS:
            self.dead_letters.labels(reason)
        for result in ATTEMPT_RESULTS:
            self.attempts.labels(result)
