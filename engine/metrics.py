"""Prometheus metrics of the scoring service (multi-process safe under several uvicorn workers).

What an operator reads here: decisions by verdict and the time of each scoring stage; HTTP
requests by route template, method and status (counted by `antifraud.engine.api.http_metrics`);
the distribution of scores; which model, shadow model and rule set are live (info metrics,
value 1, updated at start and after every reload); and the model monitor's latest figures, read from
Redis when /metrics is scraped (`antifraud_monitor_*`, engine/monitor_summary.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from antifraud.engine.decision_record import Answer, Timings

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Fraud scores crowd near 0 (fraud is a fraction of a percent of payments), so the buckets are
# fine at the bottom and coarse above the review and block bands.
SCORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RISK_SCORE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 70.0, 90.0, 100.0)
INFO_METRICS = ("antifraud_model_info", "antifraud_rules_info")


class _Versioned(Protocol):
    @property
    def version(self) -> str: ...


class LoadedVersions(Protocol):
    """What `note_loaded` reads: `antifraud.engine.pipeline.Loaded` (model, shadow model, rules)."""

    @property
    def model(self) -> _Versioned | None: ...

    @property
    def shadow(self) -> _Versioned | None: ...

    @property
    def rules(self) -> _Versioned | None: ...


class Metrics:
    """Counters and histograms the service updates on every decision and request."""

    def __init__(self, registry: CollectorRegistry | None = None, shared: Collector | None = None) -> None:
        """`shared`: metrics every worker reads from one place at scrape time (the model monitor's
        gauges, engine/monitor_summary.py), rendered beside this process's or the merged ones."""
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # multi-process mode writes every metric to files and needs no registry of its own
        self.registry = registry or (None if self.multiprocess else CollectorRegistry())
        self.shared = shared
        if shared is not None and self.registry is not None:
            self.registry.register(shared)
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
        self.buffer_full = Counter(
            "antifraud_buffer_full_total",
            "Decisions answered but not logged, and feedback events refused, because the buffer was "
            "full (the decision sink is down or behind)",
            ["stream"],
            registry=r,
        )
        self.http_requests = Counter(
            "antifraud_http_requests_total",
            "HTTP requests by route template (route=other when no route matched), method and status",
            ["route", "method", "status"],
            registry=r,
        )
        # No verdict label: the verdict counter has that split, and a label would multiply the
        # series by the number of verdicts for every bucket.
        self.score = Histogram(
            "antifraud_score", "Model score of each scored decision", buckets=SCORE_BUCKETS, registry=r
        )
        self.risk_score = Histogram(
            "antifraud_risk_score",
            "Risk score (0-100) of each scored decision",
            buckets=RISK_SCORE_BUCKETS,
            registry=r,
        )
        # Info metrics as gauges: prometheus_client's Info is refused in multi-process mode.
        # "livemostrecent" merges the workers' files by taking the value written last, so a version
        # a worker moved away from (set to 0) stops counting as live even while a dead worker's
        # file still says 1; "live" drops a worker's file when the supervisor marks it dead.
        self.model_info = Gauge(
            "antifraud_model_info",
            "The model version each role serves (value 1)",
            ["role", "version"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.rules_info = Gauge(
            "antifraud_rules_info",
            "The rule set version served (value 1)",
            ["version"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._live: dict[tuple[Gauge, tuple[str, ...]], None] = {}

    def observe(self, decision: Answer, timings: Timings) -> None:
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
        score, risk_score = decision["score"], decision["risk_score"]
        if score is not None:  # None: no model loaded, the fail policy answered
            self.score.observe(score)
        if risk_score is not None:
            self.risk_score.observe(risk_score)

    def note_loaded(self, loaded: LoadedVersions) -> None:
        """Publish the versions now served (`model_info`, `rules_info`); the previous ones go.

        Called after the first load and after every successful reload.
        """
        wanted: dict[tuple[Gauge, tuple[str, ...]], None] = {}
        for role, model in (("live", loaded.model), ("shadow", loaded.shadow)):
            if model is not None:
                wanted[(self.model_info, (role, model.version))] = None
        if loaded.rules is not None:
            wanted[(self.rules_info, (loaded.rules.version,))] = None
        for gauge, labels in self._live.keys() - wanted.keys():
            if self.multiprocess:
                # a worker's metrics file cannot forget a series: 0 marks it gone, and `render`
                # leaves zeros of the info metrics out
                gauge.labels(*labels).set(0)
            else:
                gauge.remove(*labels)
        for gauge, labels in wanted:
            gauge.labels(*labels).set(1)
        self._live = wanted

    def render(self) -> bytes:
        """The exposition text; merges every worker's values when PROMETHEUS_MULTIPROC_DIR is set."""
        if self.multiprocess:
            registry = CollectorRegistry()
            registry.register(_WithoutRetiredVersions(multiprocess.MultiProcessCollector(None)))
            if self.shared is not None:
                registry.register(self.shared)
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)


class _WithoutRetiredVersions(Collector):
    """The merged multi-process metrics minus the info series set to 0 (versions no longer served)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        return self._filtered(self.collector.collect())

    @staticmethod
    def _filtered(metrics: Iterable[Metric]) -> Iterator[Metric]:
        for metric in metrics:
            if metric.name in INFO_METRICS:
                metric.samples = [s for s in metric.samples if s.value != 0]
            yield metric
