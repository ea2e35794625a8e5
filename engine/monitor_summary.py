"""The model monitor's latest summary: its shape, its one Redis key, and the Prometheus gauges made of it.

The decision sink's monitoring job (engine/monitor_job.py) writes one summary per run as a single JSON
value, `{ns}:monitor:latest`; every worker of every host reads that same value: the console's
monitoring page, and each worker's /metrics, which turns it into gauges when it is scraped
(`SummaryGauges`). The gauges are made at scrape time rather than set in the sink because a service
started by `serve` exposes only its workers' /metrics (single-process or merged multi-process), never
the sink's registry; and a value read at scrape time lets `antifraud_monitor_last_run_age_seconds`
keep growing when the job stops, where a gauge set by a dead job would stay frozen.

The value is bounded: at most `MAX_FEATURES` features and `MAX_FLAGS` flags, a few KB for the spec's
features (docs/monitoring.md, "In the service").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import cast

import orjson
import redis
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from typing_extensions import TypedDict

from antifraud.engine.monitoring.flags import Flag

log = logging.getLogger("antifraud.monitor")

#: the summary's layout; a value of another version is not shown (a newer sink wrote it)
SUMMARY_VERSION = 1
#: the most features and flags one summary holds: what bounds its size
MAX_FEATURES = 500
MAX_FLAGS = 100


class FeatureFigures(TypedDict):
    """One feature's drift in the window: PSI of its non-missing values, missing share then and now."""

    feature: str
    psi: float
    missing_reference: float
    missing_now: float
    rows: int
    present: int  # of which not missing: the values the PSI is computed on


class ProfileInfo(TypedDict):
    """The reference profile the drift was measured against."""

    model_version: str
    rows: int
    period: list[str]


class Summary(TypedDict):
    """One run of the monitoring job (docs/monitoring.md, "In the service")."""

    version: int
    at: str  # when the run ended, ISO 8601 UTC
    took_s: float
    window_s: float
    start: str  # the window's start: payments from then on were read (ISO 8601 UTC)
    rows: int  # decisions read (at most the job's max_rows, the newest)
    capped: bool  # true when max_rows stopped the read before the window's start
    drift_rows: int  # of which answered with every signal: the rows the drift is measured on
    model_dir: str
    profile: ProfileInfo | None
    note: str  # why something is not measured ("no reference profile ..."); "" when all is
    features: list[FeatureFigures]  # highest PSI first
    score_psi: float | None  # None: no profile, or no decision scored by the profile's model
    score_rows: int
    verdicts: dict[str, float]  # share of each verdict among the rows
    verdicts_reference: dict[str, float]  # the profile's mix ({} when unknown)
    degraded_rows: int
    degraded_share: float
    queue_open: int
    queue_oldest_age_s: float | None  # None: the queue is empty
    min_rows: int
    ignored: list[str]  # features never flagged (Thresholds.ignore: the clock's own, by default)
    flags: list[Flag]  # alerts first, then warnings; in JSON, an object of Flag's six fields


def summary_key(namespace: str) -> str:
    """The Redis key of the latest summary."""
    return f"{namespace}:monitor:latest"


def write_summary(client: redis.Redis, namespace: str, summary: Summary) -> int:
    """Store `summary` as the latest (one SET, replacing the previous one); returns its size in bytes.
    orjson writes each `Flag` (a dataclass) as an object of its fields."""
    value = orjson.dumps(summary)
    client.set(summary_key(namespace), value)
    return len(value)


def read_summary(client: redis.Redis, namespace: str) -> Summary | None:
    """The latest summary, or None when there is none yet (or it is of another layout)."""
    raw = cast(bytes | None, client.get(summary_key(namespace)))
    if raw is None:
        return None
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.error("%s is not JSON: ignored", summary_key(namespace))
        return None
    if not isinstance(found, dict) or found.get("version") != SUMMARY_VERSION:
        return None
    try:
        found["flags"] = [Flag(**flag) for flag in found["flags"]]
    except (KeyError, TypeError):  # a summary of this version always has them: written by hand?
        log.error("%s has no readable flags: ignored", summary_key(namespace))
        return None
    return cast(Summary, found)


def age_s(summary: Summary, now: datetime | None = None) -> float:
    """Seconds since the summary's run ended."""
    now = now or datetime.now(UTC)
    return max(0.0, (now - datetime.fromisoformat(summary["at"])).total_seconds())


def gauges(summary: Summary, now: datetime | None = None) -> list[Metric]:
    """The Prometheus gauges of a summary (their names are listed in docs/monitoring.md)."""
    psi = GaugeMetricFamily(
        "antifraud_monitor_feature_psi",
        "Population stability index of each feature in the last monitoring window",
        labels=["feature"],
    )
    missing = GaugeMetricFamily(
        "antifraud_monitor_feature_missing_share",
        "Share of the window's decisions where the feature was missing",
        labels=["feature"],
    )
    for figures in summary["features"]:
        psi.add_metric([figures["feature"]], figures["psi"])
        missing.add_metric([figures["feature"]], figures["missing_now"])
    metrics: list[Metric] = [psi, missing]
    if summary["score_psi"] is not None:
        metrics.append(
            GaugeMetricFamily(
                "antifraud_monitor_score_psi",
                "Population stability index of the live model's scores",
                value=summary["score_psi"],
            )
        )
    oldest = summary["queue_oldest_age_s"]
    for name, text, value in (
        (
            "degraded_share",
            "Share of the window's decisions answered without every signal",
            summary["degraded_share"],
        ),
        ("review_queue_open", "Open review cases at the last run", summary["queue_open"]),
        ("review_queue_oldest_seconds", "Wait of the oldest open review case at the last run", oldest or 0.0),
        ("rows", "Decisions the last run read", summary["rows"]),
        ("flags", "Figures past their thresholds at the last run", len(summary["flags"])),
        ("last_run_age_seconds", "Seconds since the last monitoring run ended", age_s(summary, now)),
    ):
        metrics.append(GaugeMetricFamily(f"antifraud_monitor_{name}", text, value=float(value)))
    return metrics


class SummaryGauges(Collector):
    """The latest summary as gauges, read from Redis at each scrape (one GET): the same values from
    every worker and host. Nothing when there is no summary or Redis cannot be read."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def collect(self) -> Iterable[Metric]:
        return self._metrics()

    def _metrics(self) -> Iterator[Metric]:
        try:
            summary = read_summary(self.client, self.namespace)
        except (redis.RedisError, OSError):
            return  # /metrics still answers with everything else; the age gauge's absence says it
        if summary is not None:
            yield from gauges(summary)
