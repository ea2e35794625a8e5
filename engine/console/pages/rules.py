"""The rules at work, the rule tester and promote (docs/console.md, "Rules and the rule tester").

The rules page shows the live rule set, its files with line numbers, and each rule's hits over the last
hour and day from the 5-minute statistics (`Stats.window`: never a scan of the store). The tester takes
a file (pasted or uploaded), checks it with the checker of `antifraud rules check` and shows errors under
their lines; a set that loads is backtested by the job of `engine.rule_changes.start_test`, whose result
page polls until it is done. An admin promotes a finished test while the live set is still the one
tested against.
"""

from __future__ import annotations

import difflib
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from antifraud.engine.api.deps import ReloaderDep, ScorerDep
from antifraud.engine.audit import AuditReader
from antifraud.engine.console.deps import (
    ConsoleError,
    CsrfChecked,
    audited,
    redirect,
    render,
    require,
)
from antifraud.engine.console.sessions import Session
from antifraud.engine.rule_changes import (
    PERIODS,
    Candidate,
    RuleChangeError,
    RuleTestSpec,
    candidate,
    file_diff,
    promote,
    read_test,
    start_test,
)
from antifraud.engine.rules import RuleSet, rule_names
from antifraud.engine.stats import Stats
from antifraud.engine.store import AuditQuery

router = APIRouter()

Staff = Annotated[Session, require({"analyst", "admin"}, unscoped=True)]
#: a new file's entry in the tester's file choice
NEW_FILE = "(new file)"


def _file_lines(request: Request, ruleset: RuleSet) -> list[tuple[str, list[str]]]:
    rules_dir = request.app.state.settings.rules_dir
    return [(f, (rules_dir / f).read_text(encoding="utf-8").splitlines()) for f in ruleset.files]


@router.get("/console/rules")
def rules_page(request: Request, session: Staff, scorer: ScorerDep, promoted: str = "") -> Response:
    """The live rule set with its hits over the last hour and day, its files and today's promotions."""
    ruleset = scorer.loaded.rules
    now = datetime.now(UTC)
    stats = Stats(request.app.state.redis, request.app.state.settings.namespace)
    hour, day = stats.window(now - timedelta(hours=1), now), stats.window(now - timedelta(days=1), now)
    hits = [
        (rule, *((t.shadow_rules if rule.mode == "shadow" else t.rules).get(rule.id, 0) for t in (hour, day)))
        for rule in ruleset.rules
    ]
    # today's, from the store and the audit stream's unwritten tail
    midnight = datetime.combine(now.date(), time(), UTC)
    state = request.app.state
    reader = AuditReader(state.services.reader.store, state.redis, state.settings.namespace)
    promotions = reader.read_or_tail(AuditQuery(action="rules.promote", start=midnight, limit=500))
    return render(
        request,
        "rules.html",
        {
            "ruleset": ruleset,
            "hits": hits,
            "decisions": (hour.n, day.n),
            "files": _file_lines(request, ruleset),
            "promotions": promotions,
            "promoted": promoted,
        },
    )


def _form_context(request: Request, ruleset: RuleSet, **context: Any) -> dict[str, Any]:
    settings = request.app.state.settings
    return {
        "files": list(ruleset.files),
        "new_file": NEW_FILE,
        "periods": list(PERIODS),
        "history": settings.console_history,
        "version": ruleset.version,
        **context,
    }


@router.get("/console/rules/test")
def test_form(request: Request, session: Staff, scorer: ScorerDep, file: str = "") -> Response:
    """The tester's form, its text area holding the chosen live file."""
    ruleset = scorer.loaded.rules
    chosen = file if file in ruleset.files else (ruleset.files[0] if ruleset.files else NEW_FILE)
    text = (
        (request.app.state.settings.rules_dir / chosen).read_text(encoding="utf-8")
        if chosen != NEW_FILE
        else ""
    )
    return render(
        request, "rule_test.html", _form_context(request, ruleset, chosen=chosen, text=text, period="24 h")
    )


@router.post("/console/rules/test")
async def start(request: Request, session: CsrfChecked, scorer: ScorerDep) -> Response:
    """Check a rule file; with errors, the form again with them under their lines; else start its test."""
    if not session.unscoped:
        raise ConsoleError(
            403, f"the rule tester needs a key for every merchant; {session.key_name!r} is scoped"
        )
    form = await request.form()
    ruleset = scorer.loaded.rules
    settings = request.app.state.settings
    chosen = str(form.get("file", ""))
    name = str(form.get("new_name", "")).strip() if chosen == NEW_FILE else chosen
    upload = form.get("upload")
    text = str(form.get("text", ""))
    if isinstance(upload, UploadFile) and upload.filename:
        try:
            text = (await upload.read()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConsoleError(400, "the uploaded file is not UTF-8 text") from exc
    period = str(form.get("period", ""))
    start_day, end_day = str(form.get("start", "")), str(form.get("end", ""))
    names = rule_names(scorer.features.feature_names)
    try:
        cand = candidate(settings.data_dir, settings.rules_dir, name, text, names)
        spec = _spec(request, cand, period, start_day, end_day)
    except RuleChangeError as exc:
        context = _form_context(
            request, ruleset, chosen=chosen, text=text, period=period, problem=exc.message
        )
        return render(request, "rule_test.html", context, exc.status)
    if cand.errors:
        lines = cand.text.splitlines()
        here = [e for e in cand.errors if e.file == cand.file and e.line]
        context = _form_context(
            request,
            ruleset,
            chosen=chosen,
            new_name=name if chosen == NEW_FILE else "",
            text=text,
            period=period,
            numbered=[(i, line, [e for e in here if e.line == i]) for i, line in enumerate(lines, 1)],
            elsewhere=[e for e in cand.errors if e not in here],
        )
        return render(request, "rule_test.html", context, 422)
    detail = {"file": cand.file, "period": period, "history": [start_day, end_day] if spec.history else None}
    audited(request, session, "rules.test", cand.id, {**detail, "base_version": ruleset.version})
    try:
        start_test(request.app.state.redis, settings.namespace, cand, spec, ruleset.version, session.key_name)
    except RuleChangeError as exc:
        raise ConsoleError(exc.status, exc.message) from exc
    return redirect(f"/console/rules/tests/{cand.id}")


def _spec(request: Request, cand: Candidate, period: str, start_day: str, end_day: str) -> RuleTestSpec:
    settings = request.app.state.settings
    history = settings.console_history if settings.console_history and start_day and end_day else None
    if history is not None:
        try:
            if date.fromisoformat(start_day) >= date.fromisoformat(end_day):
                raise RuleChangeError(400, "the history period ends after it starts")
        except ValueError as exc:
            raise RuleChangeError(400, f"history dates are YYYY-MM-DD: {exc}") from exc
    if period not in PERIODS and history is None:
        raise RuleChangeError(
            400, f"choose a period of logged decisions ({', '.join(PERIODS)}) or history dates"
        )
    return RuleTestSpec(
        live_dir=str(settings.rules_dir),
        candidate_dir=str(cand.directory),
        file=cand.file,
        hours=PERIODS.get(period),
        history=str(history) if history else None,
        start=start_day or None,
        end=end_day or None,
        store_url=settings.store_url,
        model_dir=str(settings.model_dir) if settings.model_dir else None,
        fail_policy=settings.fail_policy,
        max_decisions=settings.console_test_max_decisions,
    )


def _test(request: Request, test_id: str) -> dict[str, Any]:
    try:
        test = read_test(request.app.state.redis, request.app.state.settings.namespace, test_id)
    except redis.RedisError as exc:
        raise ConsoleError(503, f"Redis is unavailable: retry later ({exc})") from exc
    if test is None:
        raise ConsoleError(404, f"no rule test {test_id!r} (tests are kept for a day)")
    return test


@router.get("/console/rules/tests/{test_id}")
def test_result(
    request: Request, test_id: str, session: Staff, scorer: ScorerDep, message: str = ""
) -> Response:
    """A test: running (the page polls), failed, or its result with the file's diff against the live one."""
    test = _test(request, test_id)
    path = request.app.state.settings.rules_dir / test["file"]
    live_text = path.read_text(encoding="utf-8") if path.exists() else ""
    table = difflib.HtmlDiff(wrapcolumn=80).make_table(
        live_text.splitlines(), test["text"].splitlines(), "live", "tested", context=True, numlines=3
    )
    return render(
        request,
        "rule_test_result.html",
        {
            "test": test,
            "result": test.get("result"),
            "diff": file_diff(live_text, test["text"], test["file"]),
            "diff_table": table,
            "live_version": scorer.loaded.rules.version,
            "message": message,
        },
    )


@router.post("/console/rules/tests/{test_id}/promote")
def promote_test(
    request: Request,
    test_id: str,
    session: CsrfChecked,
    scorer: ScorerDep,
    reloader: ReloaderDep,
) -> Response:
    """Write the tested file into the live rules directory and reload it (admins only)."""
    if session.role != "admin" or not session.unscoped:
        raise ConsoleError(
            403, f"promoting needs an admin key for every merchant; {session.key_name!r} is not one"
        )
    test = _test(request, test_id)
    settings = request.app.state.settings

    def record(action: str, subject: str, detail: Any) -> str:
        return audited(request, session, action, subject, detail)

    try:
        version = promote(
            request.app.state.redis,
            settings.namespace,
            settings.rules_dir,
            test,
            scorer.loaded.rules.version,
            reloader.reload_rules,
            record,
        )
    except RuleChangeError as exc:
        raise ConsoleError(exc.status, exc.message) from exc
    return redirect(f"/console/rules?promoted={version}")
