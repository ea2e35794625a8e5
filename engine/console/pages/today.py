"""The day at a glance: since midnight UTC, the verdict mix, latency, degraded answers, the review queue
and its outcomes, the buffers waiting for the sink, the webhooks' dead letters and the latest audit
records. Figures come from the 5-minute statistics the sink keeps (engine/stats.py) and a few Redis
reads: never a scan of the decision store.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Annotated, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response

from antifraud.engine.api.deps import LogDep
from antifraud.engine.audit import AuditReader
from antifraud.engine.console.deps import render, require
from antifraud.engine.console.explain import age_words
from antifraud.engine.console.pages.queue import review_queue
from antifraud.engine.console.sessions import Session
from antifraud.engine.decision_record import AuditRecord
from antifraud.engine.stats import LATENCY_EDGES_MS, Stats
from antifraud.engine.store import AuditQuery
from antifraud.engine.verdicts import VERDICTS
from antifraud.engine.webhooks.outbox import Outbox

router = APIRouter()

Staff = Annotated[Session, require({"analyst", "admin"}, unscoped=True)]


@router.get("/console/today")
def today_page(request: Request, session: Staff, log: LogDep) -> Response:
    """Today's figures."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date(), time(), UTC)
    client = request.app.state.redis
    namespace = request.app.state.settings.namespace
    totals = Stats(client, namespace).window(midnight, now)
    queue = review_queue(request)
    pipe = client.pipeline(transaction=False)
    # the outbox names its dead letters' stream (built only for the name: it publishes nothing here)
    dead_letters = Outbox(client, lambda _type: False, namespace).dead
    for stream in (log.decisions_stream, log.feedback_stream, dead_letters):
        pipe.xlen(stream)
    decisions_waiting, feedback_waiting, dead = cast(list[int], pipe.execute())
    return render(
        request,
        "today.html",
        {
            "now": now,
            "totals": totals,
            "verdicts": [(v, totals.verdicts.get(v, 0)) for v in VERDICTS],
            "latency": [
                (name, _bound_words(totals.latency_bound(q))) for name, q in (("p50", 0.5), ("p99", 0.99))
            ],
            "open_count": queue.open_count(),
            "oldest_age": age_words(now - oldest) if (oldest := queue.oldest_decided()) is not None else "",
            "day": queue.days(1)[0][1],
            "buffers": {"decisions": decisions_waiting, "feedback": feedback_waiting},
            "dead_letters": dead,
            "audit": _latest_audit(request, 20),
        },
    )


def _latest_audit(request: Request, count: int) -> list[AuditRecord]:
    """The newest audit records: the store's and the stream's unwritten tail (the sink drains the
    stream within about a second)."""
    state = request.app.state
    reader = AuditReader(state.services.reader.store, state.redis, state.settings.namespace)
    return reader.read_or_tail(AuditQuery(limit=count))


def _bound_words(bound: float | None) -> str:
    if bound is None:
        return "no decision yet"
    return f"over {LATENCY_EDGES_MS[-1]:g} ms" if bound == float("inf") else f"≤ {bound:g} ms"
