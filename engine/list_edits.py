"""Deny and allow lists edited from the console: a card, email, IP or device added or removed.

Only a list read from a file (`{file: path}` in a rules file, `RuleSet.list_files`) can be edited: an
inline list belongs to its rules file, which the rule tester changes. An edit takes the rules lock
(`rule_changes.rules_lock`, shared with promote), is recorded in the audit log before it is done,
rewrites the list file atomically (`engine.files.atomic_write`), reloads the rules in this worker (the
others follow through their file watch within about 2 s) and puts the old file back if the reload is
refused. A second audit record gives the outcome.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import redis

from antifraud.engine.files import atomic_write
from antifraud.engine.rule_changes import RuleChangeError, rules_lock
from antifraud.engine.rules import RuleSet
from antifraud.engine.rules.yaml_loader import parse_list_file

__all__ = ["LIST_TARGETS", "ListEdit", "ListEditError", "edit_list", "editable", "target"]

#: which list a console action on ("deny" or "allow", the payment field) edits
LIST_TARGETS: Final[Mapping[tuple[str, str], str]] = {
    ("deny", "card_id"): "deny_cards",
    ("deny", "email"): "deny_emails",
    ("deny", "ip"): "blocked_ips",
    ("deny", "device_id"): "deny_devices",
    ("allow", "card_id"): "trusted_cards",
    ("allow", "email"): "trusted_emails",
    ("allow", "ip"): "trusted_ips",
    ("allow", "device_id"): "trusted_devices",
}
MAX_VALUE: Final = 128
MAX_REASON: Final = 200
#: a value is one token: no blank (it would be cut at " #") and no '#' (a comment in a list file)
_VALUE: Final = re.compile(r"[^\s#]+")

#: records an audit entry (action, subject, detail) and returns its id; raises to refuse the edit
Record = Callable[[str, str, Mapping[str, object]], str]


class ListEditError(Exception):
    """An edit refused; `status` is the HTTP status a page answers with, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class ListEdit:
    """What an edit did: `changed` False when the value was already listed (or not listed, to remove)."""

    list_name: str
    value: str
    changed: bool
    message: str
    rules_version: str | None = None


def target(kind: str, field: str) -> str:
    """The list a (deny or allow, payment field) action edits; ListEditError 400 for another pair."""
    name = LIST_TARGETS.get((kind, field))
    if name is None:
        raise ListEditError(400, f"no {kind} list for {field!r}: lists take card_id, email, ip and device_id")
    return name


def editable(ruleset: RuleSet, list_name: str) -> str | None:
    """None when the list can be edited from the console, else why not (shown on its disabled button)."""
    if list_name not in ruleset.lists:
        return f"the live rule set (version {ruleset.version}) has no list {list_name!r}"
    if list_name not in ruleset.list_files:
        return f"{list_name} is written inline in a rules file: change it with the rule tester"
    return None


def _check(value: str, reason: str) -> None:
    if not value or len(value) > MAX_VALUE or not _VALUE.fullmatch(value):
        raise ListEditError(400, f"a list value is one word of at most {MAX_VALUE} characters, without '#'")
    if not reason.strip() or len(reason) > MAX_REASON or "\n" in reason or "\r" in reason:
        raise ListEditError(400, f"give a reason: one line of at most {MAX_REASON} characters")


def edit_list(
    client: redis.Redis,
    namespace: str,
    rules_dir: Path,
    ruleset: RuleSet,
    reload_rules: Callable[[], dict[str, Any]],
    record: Record,
    *,
    add: bool,
    list_name: str,
    value: str,
    reason: str,
    actor: str,
) -> ListEdit:
    """Add `value` to the list file of `list_name` (with `reason` and `actor` in a comment), or remove it.

    Raises ListEditError (409 while another change holds the lock or the list is not editable; 400 for
    a bad value or reason; 500 when the edited rule set is refused and the old file is put back).
    """
    action = "list.add" if add else "list.remove"
    if add:
        _check(value, reason)
    if why := editable(ruleset, list_name):
        raise ListEditError(409, why)
    path = rules_dir / ruleset.list_files[list_name]
    try:
        with rules_lock(client, namespace):
            old = path.read_text(encoding="utf-8")
            listed = value in parse_list_file(old)
            if listed == add:
                where = "already on" if add else "not on"
                return ListEdit(list_name, value, False, f"{value} is {where} {list_name}: nothing written")
            detail = {"list": list_name, "file": str(ruleset.list_files[list_name]), "reason": reason}
            record(action, value, detail)
            atomic_write(path, _added(old, value, reason, actor) if add else _removed(old, value))
            outcome = reload_rules()
            if not outcome.get("reloaded"):
                atomic_write(path, old)
                reload_rules()
                record(action, value, {**detail, "outcome": "refused", "errors": outcome.get("errors", [])})
                raise ListEditError(500, f"the rule set was refused, {list_name} is unchanged: {outcome}")
            version = str(outcome["rules_version"])
            record(action, value, {**detail, "outcome": "done", "rules_version": version})
    except RuleChangeError as exc:
        raise ListEditError(409, str(exc)) from exc
    done = "added to" if add else "removed from"
    return ListEdit(list_name, value, True, f"{value} {done} {list_name}; rules version {version}", version)


def _added(text: str, value: str, reason: str, actor: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")
    line = f"{value}  # {reason.strip()} ({actor}, {stamp})\n"
    return (text if not text or text.endswith("\n") else text + "\n") + line


def _removed(text: str, value: str) -> str:
    # a line is the value's when the value is what the list file reads from it
    kept = [line for line in text.splitlines(keepends=True) if parse_list_file(line) != {value}]
    return "".join(kept)
