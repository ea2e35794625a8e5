"""The decision page and the search of decisions.

The decision page shows what `GET /v1/decisions/{id}` answers (engine/decision_view.py, the same
read) in words: the payment as stored (a raw card number was replaced by its keyed hash on arrival;
the entity fields are shown as tokens), the verdict, scores, every reason (engine/console/explain.py),
the features by their human names (features/labels.py), the card's earlier decisions, and a timeline
of the feedback and the review case. Search builds a `DecisionQuery` (100 rows a page, newest first;
the next page starts before the last row's payment time) and defaults to the last 7 days, since a
query without a time range reads every day of the store. Every read goes through `DecisionReader`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, cast

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from antifraud.engine.api.deps import ReaderDep, ScorerDep
from antifraud.engine.console.deps import ConsoleError, redirect, render, require
from antifraud.engine.console.explain import contribution_lines, feature_rows, reason_lines, skipped_lines
from antifraud.engine.console.pages.lists import list_actions
from antifraud.engine.console.pages.queue import review_queue
from antifraud.engine.console.sessions import Session
from antifraud.engine.decision_reads import DecisionReader, StoreUnavailable
from antifraud.engine.decision_record import Decision
from antifraud.engine.decision_view import NotFound, explained
from antifraud.engine.review.queue import Case
from antifraud.engine.store import DecisionQuery
from antifraud.engine.verdicts import VERDICTS, Verdict
from antifraud.engine.vocabulary import ENTITY_FIELDS
from antifraud.features.labels import feature_labels

router = APIRouter()

Reader = Annotated[Session, require({"analyst", "admin"})]
#: the card's earlier decisions shown on a decision page
EARLIER = 20
#: rows of a search page
SEARCH_ROWS = 100
#: the time range a search form starts with
DEFAULT_DAYS = 7


@router.get("/console/decisions/{transaction_id}")
def decision_page(
    request: Request,
    transaction_id: str,
    session: Reader,
    reader: ReaderDep,
    scorer: ScorerDep,
    message: str = "",
) -> Response:
    """One decision, explained, with the card's earlier decisions and the timeline."""
    try:
        decision = explained(reader, scorer, transaction_id, session.merchants)
        earlier = _earlier(reader, decision, session.merchants)
    except NotFound as exc:
        raise ConsoleError(404, str(exc)) from exc
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        raise ConsoleError(503, f"the decision store is unavailable: retry later ({exc})") from exc
    labels = feature_labels()
    reasons = decision["reasons"]
    case = review_queue(request).case(transaction_id)
    payment = decision["payment"]
    return render(
        request,
        "decision.html",
        {
            "d": decision,
            "payment": [(k, v, k in ENTITY_FIELDS) for k, v in payment.items() if k != "metadata"],
            "metadata": payment.get("metadata") or {},
            "reasons": reason_lines(reasons, scorer.loaded.rules, decision["degraded"]),
            "skipped": skipped_lines(reasons),
            "contributions": contribution_lines(reasons, labels),
            "features": feature_rows(decision["features"], labels),
            "earlier": earlier,
            "timeline": _timeline(decision["feedback"], case),
            "case": case,
            "message": message,
            "list_actions": list_actions(payment, scorer.loaded.rules),
        },
    )


def _earlier(
    reader: DecisionReader, decision: dict[str, Any], merchants: Collection[str] | None
) -> list[Decision]:
    card = decision["payment"].get("card_id")
    if not card:
        return []
    end = datetime.fromisoformat(decision["timestamp"])
    found = reader.search(DecisionQuery(card_id=str(card), end=end, limit=EARLIER))
    return [d for d in found if merchants is None or str(d["payment"].get("merchant_id")) in merchants]


def _timeline(feedback: list[dict[str, Any]], case: Case | None) -> list[tuple[str, str]]:
    """(time, what happened) of the feedback received and the review case, oldest first."""
    events = []
    for f in feedback:
        said = f.get("label") or f.get("outcome") or f.get("result") or ""
        events.append((f["received_at"], f"feedback: {f['kind']} {said}".strip()))
    if case is not None:
        why = ": the challenge failed" if case.source == "challenge" else ""
        events.append((case.queued_at, f"entered the review queue{why}"))
        if case.claimed_by:
            events.append(("", f"claimed by {case.claimed_by} ({case.claim_ms_left // 60_000} min left)"))
        if case.resolved_at:
            events.append(
                (case.resolved_at, f"resolved as {case.outcome} by {case.resolved_by}: {case.note}")
            )
    return sorted(events, key=lambda e: e[0] or "~")


class SearchForm(BaseModel):
    """The search form's fields (all optional; dates are UTC days, `before` a payment time)."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: str = ""
    card_id: str = ""
    customer_id: str = ""
    merchant_id: str = ""
    verdict: str = ""
    start: str = ""
    end: str = ""
    before: str = ""


def _day(text: str, field: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError as exc:
        raise ConsoleError(422, f"{field} must be a day as YYYY-MM-DD, not {text!r}") from exc


def query_of(form: SearchForm, merchants: Collection[str] | None, today: date) -> DecisionQuery:
    """The store query of a search form for a session's merchants (a scoped key searches one of its
    merchants: the one chosen, else the first)."""
    start = _day(form.start, "start") or today - timedelta(days=DEFAULT_DAYS - 1)
    last = _day(form.end, "end") or today
    end = datetime.combine(last + timedelta(days=1), time(), UTC)
    if form.before:
        try:
            end = min(end, datetime.fromisoformat(form.before))
        except ValueError as exc:
            raise ConsoleError(422, f"before must be a time, not {form.before!r}") from exc
    if form.verdict and form.verdict not in VERDICTS:
        raise ConsoleError(422, f"verdict must be one of {', '.join(VERDICTS)}, not {form.verdict!r}")
    merchant = form.merchant_id or None
    if merchants is not None:
        if merchant is not None and merchant not in merchants:
            raise ConsoleError(403, f"this key may not search merchant {merchant!r}")
        merchant = merchant or sorted(merchants)[0]
    return DecisionQuery(
        card_id=form.card_id or None,
        customer_id=form.customer_id or None,
        merchant_id=merchant,
        verdict=cast(Verdict, form.verdict) if form.verdict else None,
        start=datetime.combine(start, time(), UTC),
        end=end,
        limit=SEARCH_ROWS,
    )


@router.get("/console/search")
def search_page(request: Request, session: Reader, reader: ReaderDep) -> Response:
    """The search form and its results; a transaction id goes straight to its decision."""
    form = SearchForm.model_validate(dict(request.query_params))
    if form.transaction_id:
        return redirect(f"/console/decisions/{form.transaction_id}")
    today = datetime.now(UTC).date()
    query = query_of(form, session.merchants, today)
    searched = bool(request.query_params)
    try:
        rows = reader.search(query) if searched else []
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        raise ConsoleError(503, f"the decision store is unavailable: retry later ({exc})") from exc
    shown = {
        **form.model_dump(),
        "start": form.start or (today - timedelta(days=DEFAULT_DAYS - 1)).isoformat(),
        "end": form.end or today.isoformat(),
    }
    next_before = rows[-1]["timestamp"] if len(rows) == SEARCH_ROWS else None
    return render(
        request,
        "search.html",
        {
            "form": shown,
            "rows": rows,
            "searched": searched,
            "next_before": next_before,
            "verdicts": VERDICTS,
            "merchants": sorted(session.merchants) if session.merchants is not None else None,
        },
    )
