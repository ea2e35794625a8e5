"""The deny and allow lists: every list of the live rule set, with add and remove for those in a file.

Edits go through `engine.list_edits` (the rules lock, the audit log, an atomic rewrite, a live reload).
An add from a decision page carries its transaction id: the value must then be that payment's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response

from antifraud.engine.api.deps import ReaderDep, ReloaderDep, ScorerDep
from antifraud.engine.console.deps import ConsoleError, CsrfChecked, audited, redirect, render, require
from antifraud.engine.console.sessions import Session
from antifraud.engine.decision_reads import StoreUnavailable
from antifraud.engine.list_edits import LIST_TARGETS, ListEditError, edit_list, editable, target
from antifraud.engine.rules import RuleSet
from antifraud.engine.rules.yaml_loader import parse_list_file

router = APIRouter()

Staff = Annotated[Session, require({"analyst", "admin"}, unscoped=True)]


def list_actions(payment: Mapping[str, Any], ruleset: RuleSet) -> list[dict[str, Any]]:
    """The add-to-list buttons of a decision page: one per (deny or allow, entity the payment has), with
    the list it edits and, when it cannot be edited, why (the button is then disabled)."""
    actions = []
    for (kind, field), name in LIST_TARGETS.items():
        value = payment.get(field)
        if value in (None, ""):
            continue
        listed = name in ruleset.lists and str(value) in ruleset.lists[name]
        actions.append(
            {
                "kind": kind,
                "field": field,
                "value": str(value),
                "list": name,
                "listed": listed,
                "why_not": editable(ruleset, name),
            }
        )
    return actions


@router.get("/console/lists")
def lists_page(
    request: Request, session: Staff, scorer: ScorerDep, message: str = "", error: str = ""
) -> Response:
    """Every list of the live rule set; a file's entries with their comments, removable."""
    ruleset = scorer.loaded.rules
    rules_dir = request.app.state.settings.rules_dir
    lists = []
    for name in sorted(ruleset.lists):
        entries: list[tuple[str, str]] = []
        if path := ruleset.list_files.get(name):
            for line in (rules_dir / path).read_text(encoding="utf-8").splitlines():
                for value in parse_list_file(line):
                    entries.append((value, line.split("#", 1)[1].strip() if " #" in line else ""))
        else:
            entries = [(v, "") for v in sorted(ruleset.lists[name])]
        lists.append(
            {
                "name": name,
                "file": ruleset.list_files.get(name),
                "entries": entries,
                "why_not": editable(ruleset, name),
            }
        )
    targets = [(kind, field, name) for (kind, field), name in LIST_TARGETS.items()]
    return render(
        request,
        "lists.html",
        {"lists": lists, "targets": targets, "version": ruleset.version, "message": message, "error": error},
    )


@router.post("/console/lists/add")
async def add_to_list(
    request: Request, session: CsrfChecked, scorer: ScorerDep, reloader: ReloaderDep, reader: ReaderDep
) -> Response:
    """Add a value to a deny or allow list (from the lists page, or a decision page with its payment)."""
    return await _edit(request, session, scorer, reloader, reader, add=True)


@router.post("/console/lists/remove")
async def remove_from_list(
    request: Request, session: CsrfChecked, scorer: ScorerDep, reloader: ReloaderDep, reader: ReaderDep
) -> Response:
    """Remove a value from a list file."""
    return await _edit(request, session, scorer, reloader, reader, add=False)


async def _edit(
    request: Request,
    session: Session,
    scorer: ScorerDep,
    reloader: ReloaderDep,
    reader: ReaderDep,
    *,
    add: bool,
) -> Response:
    if not session.unscoped:
        raise ConsoleError(403, f"lists apply to every merchant: {session.key_name!r} is scoped to some")
    form = await request.form()
    value, reason = str(form.get("value", "")).strip(), str(form.get("reason", "")).strip()
    tx = str(form.get("transaction_id", ""))
    # the lists page sends "kind:field" in one select, a decision page's buttons send both
    kind, _, field = str(form.get("target", "")).partition(":")
    kind, field = kind or str(form.get("kind", "")), field or str(form.get("field", ""))
    try:
        name = target(kind, field) if add else str(form.get("list", ""))
        if tx:
            _check_payment(reader, tx, field, value)
    except ListEditError as exc:
        raise ConsoleError(exc.status, exc.message) from exc
    settings = request.app.state.settings

    def record(action: str, subject: str, detail: Mapping[str, object]) -> str:
        return audited(
            request, session, action, subject, {**detail, **({"transaction_id": tx} if tx else {})}
        )

    try:
        done = edit_list(
            request.app.state.redis,
            settings.namespace,
            settings.rules_dir,
            scorer.loaded.rules,
            reloader.reload_rules,
            record,
            add=add,
            list_name=name,
            value=value,
            reason=reason if add else (reason or "removed from the console"),
            actor=session.key_name,
        )
    except ListEditError as exc:
        if exc.status == 400:
            back = f"/console/decisions/{quote(tx, safe='')}" if tx else "/console/lists"
            return redirect(f"{back}?{urlencode({'message' if tx else 'error': exc.message})}")
        raise ConsoleError(exc.status, exc.message) from exc
    except (redis.RedisError, OSError) as exc:
        raise ConsoleError(503, f"the list could not be written: {exc}") from exc
    if tx:
        return redirect(f"/console/decisions/{quote(tx, safe='')}?{urlencode({'message': done.message})}")
    return redirect(f"/console/lists?{urlencode({'message': done.message})}")


def _check_payment(reader: ReaderDep, tx: str, field: str, value: str) -> None:
    """The value must be the payment's own: a decision page's button lists nothing else."""
    try:
        decision = reader.decision(tx)
    except (redis.RedisError, OSError, StoreUnavailable) as exc:
        raise ListEditError(503, f"the decision store is unavailable: retry later ({exc})") from exc
    if decision is None:
        raise ListEditError(404, f"no decision stored for transaction {tx!r}")
    if str(decision["payment"].get(field, "")) != value:
        raise ListEditError(400, f"{value!r} is not the {field} of payment {tx}")
