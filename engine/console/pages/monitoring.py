"""Model monitoring: the latest summary of the decision sink's monitoring job (engine/monitor_job.py),
read from Redis with one GET: flags first, then feature drift by PSI, score drift, the verdict mix
against the reference, the degraded share and the review queue's figures (docs/monitoring.md, "In the
service"). The page computes nothing: every worker and host shows the same run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import Response

from antifraud.engine.console.deps import render, require
from antifraud.engine.console.explain import age_words
from antifraud.engine.console.sessions import Session
from antifraud.engine.monitor_summary import age_s, read_summary
from antifraud.engine.verdicts import VERDICTS

router = APIRouter()

Staff = Annotated[Session, require({"analyst", "admin"}, unscoped=True)]


@router.get("/console/monitoring")
def monitoring_page(request: Request, session: Staff) -> Response:
    """The latest monitoring summary, or what to do when there is none."""
    settings = request.app.state.settings
    summary = read_summary(request.app.state.redis, settings.namespace)
    context: dict[str, object] = {"summary": summary, "interval_s": settings.monitor_interval_s}
    if summary is not None:
        now = datetime.now(UTC)
        shares: dict[str, float] = {**dict.fromkeys(VERDICTS, 0.0), **summary["verdicts"]}
        reference = summary["verdicts_reference"]
        oldest = summary["queue_oldest_age_s"]
        context |= {
            "at": datetime.fromisoformat(summary["at"]),
            "ago": age_words(timedelta(seconds=age_s(summary, now))),
            # a run older than two intervals: the job has stopped (or the sink)
            "stale": settings.monitor_interval_s > 0
            and age_s(summary, now) > 2 * settings.monitor_interval_s,
            "window_start": datetime.fromisoformat(summary["start"]),
            "verdicts": [(v, share, reference.get(v)) for v, share in shares.items()],
            "oldest": age_words(timedelta(seconds=oldest)) if oldest is not None else "",
        }
    return render(request, "monitoring.html", context)
