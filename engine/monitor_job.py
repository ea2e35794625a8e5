"""The model monitor in the running service: a periodic job in the decision sink's process.

Every `ANTIFRAUD_MONITOR_INTERVAL_S` (300 s; 0: off) a thread of the sink (engine/sink.py `run_sink`,
so under `serve` and a standalone `antifraud sink` alike) reads the decisions of the last
`ANTIFRAUD_MONITOR_WINDOW_S` (3600 s of payment time) through the store's query path
(`Store.search`, newest first, in slices and pages; at most `ANTIFRAUD_MONITOR_MAX_ROWS`, the
newest), measures them against the live model's reference profile (engine.monitoring: feature and
score drift), adds the verdict mix, the degraded share and the review queue's figures, flags what
crosses the thresholds, and stores the summary in Redis (engine/monitor_summary.py), where the
console and every worker's /metrics read it.

Why the sink: it is the one process of a deployment that already reads the store and Redis off the
scoring path; the scoring workers never run any of it. Each run opens a store connection of its own
and closes it (the PostgreSQL store serialises its connection's users: the sink's writes must not
wait for a read; DuckDB's buffers are given back between runs), and the job holds
`{ns}:monitor:lock` for an interval, so several sinks on one Redis run it once per interval between
them. A run that fails is logged and tried again at the next interval: the sink goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import redis

from antifraud.engine.decision_record import Decision
from antifraud.engine.monitor_summary import (
    MAX_FEATURES,
    MAX_FLAGS,
    SUMMARY_VERSION,
    FeatureFigures,
    ProfileInfo,
    Summary,
    write_summary,
)
from antifraud.engine.monitoring import FeatureDrift, ReferenceProfile, Thresholds, feature_drift, score_drift
from antifraud.engine.monitoring.drift import ThresholdsError, measured, verdict_mix
from antifraud.engine.monitoring.flags import ranked, traffic_flags
from antifraud.engine.monitoring.profile import ProfileError
from antifraud.engine.review.queue import ReviewQueue
from antifraud.engine.settings import Settings
from antifraud.engine.store import DecisionQuery, Store, open_store

log = logging.getLogger("antifraud.monitor")

#: decisions per read of the store: what bounds the job's memory besides its arrays (5,000 cost
#: 60-70 MB more at the peak than 2,000 for 10 % less CPU: benchmarks/bench_monitor_job.py)
PAGE_ROWS = 2000
#: the newest slice of the window read first (seconds); the next ones are sized by the rate seen
FIRST_SLICE_S = 60.0
#: the share of a page a slice is sized to hold (a slice that holds more is read in pages)
SLICE_FILL = 0.8
#: the first run waits this long after the sink starts (its groups and first batch come first)
FIRST_RUN_DELAY_S = 5.0


@dataclass
class Recent:
    """The window's decisions as columns: what the drift arithmetic takes."""

    names: list[str]  # the features measured (the profile's), in its order
    blocks: list[np.ndarray] = field(default_factory=list)  # per page, drift rows x names (NaN missing)
    scores: list[float] = field(default_factory=list)  # scores of drift rows decided by the profile's model
    verdicts: list[str] = field(default_factory=list)  # every row's verdict
    degraded: int = 0
    rows: int = 0
    capped: bool = False

    @property
    def drift_rows(self) -> int:
        """The rows answered with every signal: those the drift is measured on."""
        return self.rows - self.degraded

    def take(self, decisions: Sequence[Decision], model_version: str | None) -> None:
        """Add a page. Which rows the drift is measured on is `engine.monitoring.drift.measured`'s
        rule: degraded answers count in the verdict mix and the degraded share only, and the score's
        PSI takes only the scores of the profile's model."""
        nan = math.nan
        degraded = np.array([bool(d.get("degraded")) for d in decisions], dtype=bool)
        versions = np.array([d.get("model_version") for d in decisions], dtype=object)
        scores = np.array([nan if (s := d.get("score")) is None else s for d in decisions], dtype=float)
        drift, scored = measured(degraded, versions, scores, model_version)
        self.rows += len(decisions)
        self.degraded += int(degraded.sum())
        self.verdicts.extend(d["verdict"] for d in decisions)
        self.scores.extend(scores[scored].tolist())
        values: list[list[float]] = []
        for decision, keep in zip(decisions, drift, strict=True):
            if keep:
                features = decision.get("features") or {}
                values.append([nan if (v := features.get(n)) is None else v for n in self.names])
        # a page's floats as one array: Python lists of 50,000 rows would take ~100 MB, the array 24
        self.blocks.append(np.asarray(values, dtype=float).reshape(len(values), len(self.names)))

    def columns(self) -> dict[str, np.ndarray]:
        """Each feature's values over the drift rows."""
        matrix = np.concatenate(self.blocks) if self.blocks else np.empty((0, len(self.names)))
        return {name: matrix[:, i] for i, name in enumerate(self.names)}


def recent_decisions(
    store: Store,
    start: datetime,
    now: datetime,
    max_rows: int,
    names: list[str],
    model_version: str | None,
) -> Recent:
    """The newest decisions of payments since `start`, at most `max_rows`, through `Store.search`.

    A search reads every row of its time range before it returns the newest, so the window is read in
    slices from its newest end (the first open above, for payments stamped ahead of `now`), each sized
    to hold about SLICE_FILL of a page at the rate of the slice before it (at most four times as
    long), and a slice holding more in pages of PAGE_ROWS: the newest rows cost the same to read
    whether the window holds 50,000 payments or millions, and each row is read about once. A page
    ends before its oldest row's payment time; the rows of that same instant already read are
    skipped when the next page reads them again."""
    recent = Recent(names)
    step = FIRST_SLICE_S
    high: datetime | None = None  # the slice's end (exclusive); None: no end
    low = max(start, now - timedelta(seconds=step))
    seen_at_end: set[str] = set()
    in_slice = 0
    while recent.rows < max_rows:
        limit = min(PAGE_ROWS, max_rows - recent.rows) + len(seen_at_end)
        page = store.search(DecisionQuery(start=low, end=high, limit=limit))
        fresh = [d for d in page if d["transaction_id"] not in seen_at_end]
        recent.take(fresh[: max_rows - recent.rows], model_version)
        in_slice += len(fresh)
        if len(page) == limit and fresh:  # more in this slice: its next page
            oldest = page[-1]["timestamp"]
            seen_at_end = {d["transaction_id"] for d in page if d["timestamp"] == oldest}
            high = datetime.fromisoformat(oldest) + timedelta(microseconds=1)
            continue
        if low <= start:  # the window is read whole
            return recent
        step = max(1.0, min(4 * step, step * SLICE_FILL * PAGE_ROWS / in_slice if in_slice else 4 * step))
        high, low, seen_at_end, in_slice = low, max(start, low - timedelta(seconds=step)), set(), 0
    recent.capped = True
    return recent


class MonitorJob:
    """One run reads, measures and stores a summary (`run_once`); `run` repeats it every interval."""

    def __init__(self, client: redis.Redis, settings: Settings, thresholds: Thresholds | None = None) -> None:
        """The job of `settings`' namespace, model directory, store (`store_url`) and MONITOR_* bounds."""
        self.client = client
        self.settings = settings
        self.thresholds = thresholds or Thresholds.load(settings.monitor_thresholds)
        self.queue = ReviewQueue.from_settings(client, settings)
        self.lock_key = f"{settings.namespace}:monitor:lock"
        self._noted: str | None = None  # the last note logged: a missing profile is logged once

    def profile(self) -> tuple[ReferenceProfile | None, str]:
        """The live model's reference profile (read again each run: a model reload may bring a new
        one), or None and why."""
        model_dir = self.settings.model_dir
        try:
            found = ReferenceProfile.load(model_dir)
        except ProfileError as exc:
            return None, f"reference profile not readable: {exc}"
        return (found, "") if found is not None else (None, f"no reference profile in {model_dir}")

    def run_once(self, now: datetime | None = None) -> Summary:
        """Read the window, measure it, store and return the summary."""
        started = time.perf_counter()
        now = now or datetime.now(UTC)
        start = now - timedelta(seconds=self.settings.monitor_window_s)
        profile, note = self.profile()
        if note != self._noted:
            if note:
                log.warning(
                    "model monitoring: %s: reporting the verdict mix, degraded share and queue only", note
                )
            self._noted = note
        names = list(profile.features)[:MAX_FEATURES] if profile is not None else []
        version = profile.model_version if profile is not None else None
        store = open_store(self.settings.store_url)
        try:
            recent = recent_decisions(store, start, now, self.settings.monitor_max_rows, names, version)
        finally:
            store.close()
        drift_rows = recent.drift_rows
        drifts = feature_drift(profile, recent.columns()) if profile is not None and drift_rows else []
        score_psi = (
            score_drift(profile, np.asarray(recent.scores)) if profile is not None and recent.scores else None
        )
        if profile is not None and drift_rows and not recent.scores:
            note = f"no decision of the window was scored by model {version}: no score drift"
        mix = verdict_mix(recent.verdicts)
        reference_mix = dict(profile.verdicts) if profile is not None else {}
        degraded_share = recent.degraded / recent.rows if recent.rows else 0.0
        raised = ranked(
            traffic_flags(self.thresholds, recent.rows, drifts, score_psi, reference_mix, mix, degraded_share)
        )[:MAX_FLAGS]
        oldest = self.queue.oldest_decided()
        summary = Summary(
            version=SUMMARY_VERSION,
            at=datetime.now(UTC).isoformat(),
            took_s=round(time.perf_counter() - started, 3),
            window_s=self.settings.monitor_window_s,
            start=start.isoformat(),
            rows=recent.rows,
            capped=recent.capped,
            drift_rows=drift_rows,
            model_dir=str(self.settings.model_dir),
            profile=_info(profile),
            note=note,
            features=[_figures(d) for d in sorted(drifts, key=lambda d: -d.psi)],
            score_psi=score_psi,
            score_rows=len(recent.scores),
            verdicts=mix,
            verdicts_reference=reference_mix,
            degraded_rows=recent.degraded,
            degraded_share=degraded_share,
            queue_open=self.queue.open_count(),
            queue_oldest_age_s=(now - oldest).total_seconds() if oldest is not None else None,
            min_rows=self.thresholds.min_rows,
            ignored=list(self.thresholds.ignore),
            flags=raised,
        )
        size = write_summary(self.client, self.settings.namespace, summary)
        log.info(
            "model monitoring: %d decisions (%d measured), %d flags, %.2f s, %d bytes",
            recent.rows,
            drift_rows,
            len(raised),
            summary["took_s"],
            size,
        )
        return summary

    def due(self) -> bool:
        """Take the interval's lock: True when no other sink ran the job within the interval. The lock
        is left to expire (a little before the interval does, so this sink's next turn finds it free)."""
        ttl_ms = max(1, int(self.settings.monitor_interval_s * 900))
        return bool(self.client.set(self.lock_key, "1", nx=True, px=ttl_ms))

    def run(self, stop: threading.Event, first_delay_s: float = FIRST_RUN_DELAY_S) -> None:
        """Run every interval until `stop` is set; a failed run is logged, the next one tried."""
        wait = min(first_delay_s, self.settings.monitor_interval_s)
        while not stop.wait(wait):
            wait = self.settings.monitor_interval_s
            try:
                if self.due():
                    self.run_once()
            except Exception:  # the store or Redis failing must never stop the sink
                log.exception("model monitoring: the run failed; next try in %.0f s", wait)


def _info(profile: ReferenceProfile | None) -> ProfileInfo | None:
    if profile is None:
        return None
    return ProfileInfo(model_version=profile.model_version, rows=profile.rows, period=list(profile.period))


def _figures(drift: FeatureDrift) -> FeatureFigures:
    return FeatureFigures(
        feature=drift.feature,
        psi=drift.psi,
        missing_reference=drift.missing_reference,
        missing_now=drift.missing_now,
        rows=drift.rows,
        present=drift.present,
    )


def start_monitor(client: redis.Redis, settings: Settings, stop: threading.Event) -> threading.Thread | None:
    """Start the job in a daemon thread of this process (None when the interval is 0: off, or the
    thresholds file is refused). It stops when `stop` is set: join it to wait for a run in progress."""
    if settings.monitor_interval_s <= 0:
        log.info("model monitoring is off (ANTIFRAUD_MONITOR_INTERVAL_S=0)")
        return None
    try:
        thresholds = Thresholds.load(settings.monitor_thresholds)
    except ThresholdsError as exc:
        # the sink must go on writing decisions; the page and /metrics show no new run
        log.error("model monitoring is off: %s", exc)
        return None
    job = MonitorJob(client, settings, thresholds)
    thread = threading.Thread(target=job.run, args=(stop,), name="antifraud-monitor", daemon=True)
    thread.start()
    log.info(
        "model monitoring every %.0f s over the last %.0f s (at most %d decisions), model %s",
        settings.monitor_interval_s,
        settings.monitor_window_s,
        settings.monitor_max_rows,
        settings.model_dir,
    )
    return thread
