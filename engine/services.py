"""Building the scoring service, once per worker at start-up: Redis client, online features, model,
rules, decision log and reader, scorer, and the Reloader that keeps model and rules live afterwards.

One function builds everything (`build_services`), so what a worker serves with is written in one
place and the API's routes receive finished objects instead of reaching into a loader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import redis

from antifraud.engine.decision_reads import DecisionReader
from antifraud.engine.decisions import BufferBound, DecisionLog, Replication
from antifraud.engine.loader import Reloader
from antifraud.engine.metrics import Metrics
from antifraud.engine.model import ModelError, ModelRuntime
from antifraud.engine.pipeline import Loaded, Scorer
from antifraud.engine.redis_url import connect
from antifraud.engine.rules import load_rules
from antifraud.engine.settings import Settings
from antifraud.engine.store import open_store
from antifraud.features.online import OnlineFeatures

# the logger start-up model errors were always reported under, which log filters may name
log = logging.getLogger("antifraud.loader")


@dataclass(frozen=True)
class Services:
    """What one worker serves with. Built once; reloads swap the scorer's model and rules in place."""

    settings: Settings
    client: redis.Redis
    metrics: Metrics
    features: OnlineFeatures
    log: DecisionLog
    reader: DecisionReader
    scorer: Scorer
    reloader: Reloader


def connect_redis(settings: Settings) -> redis.Redis:
    """A Redis client for `settings.redis_url`, one Redis or a cluster (`redis+cluster://`:
    engine/redis_url.py); it connects lazily, on its first call."""
    if not settings.redis_url:
        raise ValueError("no Redis URL: pass --redis or set ANTIFRAUD_REDIS_URL")
    # Each call may block this worker for at most a share of the request's budget.
    timeout = settings.budget_ms * 0.6 / 1000
    return connect(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
    )


def build_services(
    settings: Settings, client: redis.Redis | None = None, metrics: Metrics | None = None
) -> Services:
    """Load rules and models and build the scorer around them.

    A missing or broken model is served as degraded (the fail policy answers), so the service can
    start and be fixed by a reload; a rule set with errors raises `RuleSetError` and stops the start,
    since serving without rules would let every payment through unchecked.
    """
    client = client if client is not None else connect_redis(settings)
    metrics = metrics if metrics is not None else Metrics()
    features = OnlineFeatures(client, namespace=settings.namespace)
    rules = load_rules(settings.rules_dir, features.feature_names)
    model = load_model_or_none(settings.model_dir, features.feature_names)
    shadow = (
        load_model_or_none(settings.shadow_model_dir, features.feature_names)
        if settings.shadow_model_dir
        else None
    )
    log = DecisionLog(
        client,
        settings.namespace,
        record_ttl_ms(features.spec.dedupe_horizon_ms),
        BufferBound(settings.buffer_max_entries, settings.buffer_max_age_s),
        Replication(settings.redis_wait_replicas, settings.redis_wait_ms),
    )
    reader = DecisionReader(log, open_store(settings.store_url))
    scorer = Scorer(
        features,
        log,
        Loaded(model, rules, shadow),
        settings.fail_policy,
        settings.shadow_share,
        settings.budget_ms,
        metrics=metrics,
    )
    # The Reloader notes the files' state now, after loading them: only a later change reloads.
    reloader = Reloader(settings, scorer)
    metrics.note_loaded(scorer.loaded)  # the versions /metrics shows as live
    return Services(settings, client, metrics, features, log, reader, scorer, reloader)


def record_ttl_ms(dedupe_horizon_ms: int) -> int:
    """How long an idempotency record is kept: a little longer than the entities whose retention is
    the dedupe horizon remember a transaction id (features/score.lua trims their ids a tenth of the
    horizon late, and renews a key's expiry with a tenth of slack), so that a retry those entities
    see as a duplicate finds the answer to give. Entities with longer exact windows (a card's 30
    days) remember ids longer still: docs/decisions.md says what a retry then gets."""
    return dedupe_horizon_ms * 6 // 5 + 60_000


def load_model_or_none(directory: Path, feature_names: list[str]) -> ModelRuntime | None:
    """The model in `directory`, or None (logged) when it cannot be loaded."""
    try:
        return ModelRuntime(directory, feature_names)
    except (ModelError, OSError) as exc:
        log.error("model not loaded: %s", exc)
        return None
