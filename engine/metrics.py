"""Prometheus metrics of the scoring service (multi-process safe under several uvicorn workers)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from antifraud.engine.decision_record import Decision, Timings

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Counters and histograms the service updates on every decision."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # multi-process mode writes every metric to files and needs no registry of its own
        self.registry = registry or (
            None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else CollectorRegistry()
        )
        r = self.registry
        self.stage = Histogram(
            "antifraud_stage_seconds", "Time per scoring stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.verdicts = Counter("antifraud_verdicts_total", "Decisions by verdict", ["verdict"], registry=r)
        self.rule_hits = Counter(
            "antifraud_rule_hits_total", "Rules that fired", ["rule", "mode"], registry=r
        )
        self.degraded = Counter("antifraud_degraded_total", "Decisions made without every signal", registry=r)
        self.redis_errors = Counter("antifraud_redis_errors_total", "Failed Redis calls", registry=r)
        self.feedback = Counter("antifraud_feedback_total", "Feedback events accepted", ["kind"], registry=r)

    def observe(self, decision: Decision, timings: Timings) -> None:
        """Record one decision."""
        for stage, ms in timings.items():
            self.stage.labels(stage.removesuffix("_ms")).observe(ms / 1000)
        self.verdicts.labels(decision["verdict"]).inc()
        for fired in decision["reasons"]["rules"]:
            self.rule_hits.labels(fired["rule"], "live").inc()
        for fired in decision["reasons"]["shadow_rules"]:
            self.rule_hits.labels(fired["rule"], "shadow").inc()
        if decision["degraded"]:
            self.degraded.inc()

    def render(self) -> bytes:
        """The exposition text; merges every worker's values when PROMETHEUS_MULTIPROC_DIR is set."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)
