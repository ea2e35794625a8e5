"""The review queue page: open cases oldest or riskiest first, claimed, released and resolved.

A resolution is recorded in the audit log first (refused when it is full), then the case is marked
resolved (only while the claim is the reviewer's or nobody's), then its label enters the feedback path
exactly as `POST /v1/feedback` takes it (engine/feedback_intake.py), so the store, the features and
training learn from it; when that fails the case is reopened, still claimed, and the page says "not
saved: retry". Last, `review.resolved` is published to the webhook outbox. A key scoped to merchants
sees and works only its merchants' cases (another's is a 404, as on the API).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

import redis
from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import Response

from antifraud.engine.api.deps import FeaturesDep, LogDep, MetricsDep, ReaderDep, ScorerDep
from antifraud.engine.console.deps import ConsoleError, CsrfChecked, audited, redirect, render, require
from antifraud.engine.console.explain import age_words, reason_lines
from antifraud.engine.console.sessions import Session
from antifraud.engine.decision_reads import StoreUnavailable
from antifraud.engine.decisions import BufferFull
from antifraud.engine.feedback import LabelFeedback
from antifraud.engine.feedback_intake import FeedbackIntake, NotYours
from antifraud.engine.review.queue import DAY_FIELDS, Case, Order, Outcome, ReviewQueue
from antifraud.engine.webhooks.outbox import Outbox

router = APIRouter()

Reviewer = Annotated[Session, require({"analyst", "admin"})]
#: the longest note a resolution takes
NOTE_MAX = 2000
PER_PAGE = 50


def review_queue(request: Request) -> ReviewQueue:
    """The app's review queue (made on first use, with the console's settings)."""
    queue: ReviewQueue | None = getattr(request.app.state, "review_queue", None)
    if queue is None:
        queue = ReviewQueue.from_settings(request.app.state.redis, request.app.state.settings)
        request.app.state.review_queue = queue
    return queue


def own_case(request: Request, session: Session, transaction_id: str) -> Case:
    """The case of a transaction, when the session may see it; a 404 page otherwise."""
    case = review_queue(request).case(transaction_id)
    if case is None or (session.merchants is not None and case.merchant not in session.merchants):
        raise ConsoleError(404, f"no review case for transaction {transaction_id!r}")
    return case


def case_page(transaction_id: str, message: str = "") -> str:
    """The decision page of a case, with a message for the reviewer."""
    return f"/console/decisions/{transaction_id}" + (f"?message={message}" if message else "")


@router.get("/console/queue")
def queue_page(
    request: Request,
    session: Reviewer,
    scorer: ScorerDep,
    order: Order = "oldest",
    page: Annotated[int, Query(ge=0)] = 0,
    message: str = "",
) -> Response:
    """The open cases, 50 to a page, with the queue's size, its oldest age and the last 7 days."""
    queue = review_queue(request)
    found = queue.page(order, page, PER_PAGE, session.merchants)
    rules = scorer.loaded.rules
    days = queue.days(7)
    oldest = queue.oldest_decided()
    return render(
        request,
        "queue.html",
        {
            "order": order,
            "found": found,
            "reasons": {c.transaction_id: reason_lines(c.reasons, rules) for c in found.cases},
            "ages": {c.transaction_id: age_words(c.age) for c in found.cases},
            "oldest_age": age_words(datetime.now(UTC) - oldest) if oldest is not None else "",
            "days": days,
            "day_fields": DAY_FIELDS,
            "overflow_today": days[0][1]["overflow"],
            "today": datetime.now(UTC).date().isoformat(),
            "message": message,
        },
    )


@router.post("/console/queue/next")
def next_case(request: Request, session: CsrfChecked, order: Annotated[Order, Form()] = "oldest") -> Response:
    """Claim the first free case among the first 50 and open it."""
    _reviewer(session)
    queue = review_queue(request)
    for transaction_id in queue.free(session.key_name, order, session.merchants):
        audited(request, session, "review.claim", transaction_id)
        if queue.claim(transaction_id, session.key_name).status == "claimed":
            return redirect(case_page(transaction_id))
    return redirect(f"/console/queue?order={order}&message=every case in view is claimed")


@router.post("/console/reviews/{transaction_id}/claim")
def claim(request: Request, transaction_id: str, session: CsrfChecked) -> Response:
    """Claim a case (or renew one's own claim)."""
    _reviewer(session)
    own_case(request, session, transaction_id)
    audited(request, session, "review.claim", transaction_id)
    result = review_queue(request).claim(transaction_id, session.key_name)
    message = {
        "claimed": "",
        "taken": f"claimed by {result.holder}",
        "resolved": f"already resolved by {result.holder}",
    }.get(result.status, "no such case")
    return redirect(case_page(transaction_id, message))


@router.post("/console/reviews/{transaction_id}/release")
def release(request: Request, transaction_id: str, session: CsrfChecked) -> Response:
    """Drop one's own claim on a case."""
    _reviewer(session)
    own_case(request, session, transaction_id)
    audited(request, session, "review.release", transaction_id)
    released = review_queue(request).release(transaction_id, session.key_name)
    return redirect(case_page(transaction_id, "" if released else "the claim was not yours"))


@router.post("/console/reviews/{transaction_id}/resolve")
def resolve(
    request: Request,
    transaction_id: str,
    session: CsrfChecked,
    log: LogDep,
    reader: ReaderDep,
    features: FeaturesDep,
    metrics: MetricsDep,
    outcome: Annotated[Outcome, Form()],
    note: Annotated[str, Form(max_length=NOTE_MAX)] = "",
) -> Response:
    """Resolve a case as fraud or legitimate, with a note; its label enters the feedback path."""
    _reviewer(session)
    own_case(request, session, transaction_id)
    if not note.strip():
        raise ConsoleError(422, "a resolution needs a note: say why")
    audited(request, session, "review.resolve", transaction_id, {"outcome": outcome, "note": note})
    queue = review_queue(request)
    done = queue.resolve(transaction_id, session.key_name, outcome, note)
    if done.status != "resolved":
        why = {"taken": f"claimed by {done.holder}", "already": f"already resolved by {done.holder}"}
        return redirect(case_page(transaction_id, why.get(done.status, "no such case")))
    now = datetime.now(UTC)
    label = LabelFeedback(transaction_id=transaction_id, kind="label", label=outcome, reported_at=now)
    try:
        FeedbackIntake(log, reader, features, metrics).accept(label, session.merchants, session.key_name)
    except (NotYours, BufferFull, redis.RedisError, OSError, StoreUnavailable):
        queue.reopen(transaction_id, session.key_name)
        return redirect(case_page(transaction_id, "not saved: retry"))
    resolved = {
        "outcome": outcome,
        "note": note,
        "resolved_by": session.key_name,
        "resolved_at": now.isoformat(),
    }
    _publish(request, transaction_id, resolved)
    return redirect(case_page(transaction_id, f"resolved as {outcome}"))


def _reviewer(session: Session) -> None:
    if session.role not in ("analyst", "admin"):
        raise ConsoleError(
            403, f"working reviews needs an analyst or admin key; {session.key_name!r} is not one"
        )


def _publish(request: Request, transaction_id: str, data: Mapping[str, object]) -> None:
    outbox: Outbox | None = getattr(request.app.state, "outbox", None)
    if outbox is not None:
        outbox.publish("review.resolved", f"review.resolved:{transaction_id}", transaction_id, data)
