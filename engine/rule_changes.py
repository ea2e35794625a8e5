"""Changing the live rules from the console: a candidate rule file, a test of it, its promotion.

`candidate` copies the live rules directory to `DATA_DIR/console/candidates/<id>/`, puts the new file
text in it and checks the copy with the checker of `antifraud rules check` (`rules.check.load_checked`).
`start_test` stores the test's spec in Redis (`<ns>:console:test:<id>`, for a day) and starts the
backtest job, `python -m antifraud.engine.rule_tests <id>`, as a child process at nice 10: off the
workers' event loop and GIL. The service never imports that job (it may use the offline tools).
`promote` writes a tested file into the live directory atomically, when the live set is still the one
it was tested against, and reloads it. Every change to the rules directory holds `rules_lock`.
docs/console-design.md, section 4, gives the reasons.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import redis

from antifraud.engine.files import atomic_write
from antifraud.engine.rules import RuleSet
from antifraud.engine.rules.check import load_checked
from antifraud.engine.rules.errors import RuleError
from antifraud.engine.rules.nodes import FieldType

__all__ = [
    "PERIODS",
    "Candidate",
    "RuleChangeError",
    "RuleTestSpec",
    "candidate",
    "file_diff",
    "finish_test",
    "promote",
    "read_test",
    "rules_lock",
    "start_test",
    "store_test",
]

LOCK_MS: Final = 10_000
TEST_KEEP_S: Final = 86_400
RUNNING_S: Final = 900
#: the periods of logged decisions a test may read, in hours
PERIODS: Final[Mapping[str, int]] = {"1 h": 1, "6 h": 6, "24 h": 24, "7 d": 168}
#: how much of a file diff the promote audit record keeps
AUDIT_DIFF_BYTES: Final = 65_536
_FILE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.yaml")
# delete the lock only while it is still ours: it may have expired and been taken by someone else
_UNLOCK: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class RuleChangeError(Exception):
    """A change refused; `status` is the HTTP status a page answers with, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@contextmanager
def rules_lock(client: redis.Redis, namespace: str) -> Iterator[None]:
    """Hold `<ns>:console:rules-lock` (10 s at most) while the rules directory is changed."""
    key, token = f"{namespace}:console:rules-lock", secrets.token_hex(8)
    if not client.set(key, token, nx=True, px=LOCK_MS):
        raise RuleChangeError(409, "another change to the rules is being written: retry in a few seconds")
    try:
        yield
    finally:
        client.eval(_UNLOCK, 1, key, token)


@dataclass(frozen=True)
class Candidate:
    """A rule file to test: the live directory's copy with it, and the checker's verdict."""

    id: str
    directory: Path
    file: str
    text: str
    ruleset: RuleSet | None
    errors: list[RuleError]


def candidate(
    data_dir: Path, rules_dir: Path, file: str, text: str, names: Mapping[str, FieldType]
) -> Candidate:
    """Copy the live rules to a new candidate directory with `file` replaced (or added) by `text`, and
    check it. RuleChangeError 400 for a file name that is not `name.yaml`."""
    if not _FILE_NAME.fullmatch(file):
        raise RuleChangeError(
            400, f"a rules file is named like default.yaml (letters, digits, _ and -), not {file!r}"
        )
    test_id = secrets.token_hex(8)
    directory = data_dir / "console" / "candidates" / test_id
    shutil.copytree(rules_dir, directory, ignore=shutil.ignore_patterns(".*"))
    (directory / file).write_text(text.replace("\r\n", "\n"), encoding="utf-8")
    ruleset, errors = load_checked(directory, names)
    if errors:  # nothing will run on it: only the errors are shown
        shutil.rmtree(directory)
    _drop_old_candidates(directory.parent)
    return Candidate(test_id, directory, file, text.replace("\r\n", "\n"), ruleset, list(errors))


def _drop_old_candidates(root: Path) -> None:
    """Remove candidate directories older than a test is kept (their tests are gone from Redis)."""
    cutoff = time.time() - TEST_KEEP_S
    for old in root.iterdir():
        if old.is_dir() and old.stat().st_mtime < cutoff:
            shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class RuleTestSpec:
    """What the job needs, stored with the test: sources, the rules on both sides, costs and bounds."""

    live_dir: str
    candidate_dir: str
    file: str
    hours: int | None  # logged decisions of the last `hours`; None: none
    history: str | None  # a history file, with its [start, end) dates
    start: str | None
    end: str | None
    store_url: str
    model_dir: str | None
    fail_policy: str
    max_decisions: int


def _test_key(namespace: str, test_id: str) -> str:
    return f"{namespace}:console:test:{test_id}"


def start_test(
    client: redis.Redis, namespace: str, cand: Candidate, spec: RuleTestSpec, base_version: str, actor: str
) -> None:
    """Store the test and start its job; RuleChangeError 409 while another test runs (one at a time)."""
    store_test(client, namespace, cand, spec, base_version, actor)
    # the job connects as this client does; in its environment, not its arguments, for the password
    env = {**os.environ, "ANTIFRAUD_RULE_TEST_REDIS": _url(client.connection_pool.connection_kwargs)}
    process = subprocess.Popen(
        [sys.executable, "-m", "antifraud.engine.rule_tests", cand.id, namespace],
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    threading.Thread(target=process.wait, name=f"rule-test-{cand.id}", daemon=True).start()


def store_test(
    client: redis.Redis, namespace: str, cand: Candidate, spec: RuleTestSpec, base_version: str, actor: str
) -> None:
    """Take the one running slot and store the test's spec (`start_test` then starts its job; tests
    run the job in process). RuleChangeError 409 while another test runs."""
    running = f"{namespace}:console:test:running"
    if not client.set(running, cand.id, nx=True, ex=RUNNING_S):
        holder = cast(bytes | None, client.get(running))
        other = read_test(client, namespace, holder.decode() if holder else "")
        by = f" by {other['actor']}" if other else ""
        raise RuleChangeError(409, f"a test{by} is running: one test runs at a time, retry when it ends")
    key = _test_key(namespace, cand.id)
    client.hset(
        key,
        mapping={
            "status": "running",
            "file": cand.file,
            "text": cand.text,
            "base_version": base_version,
            "version": cand.ruleset.version if cand.ruleset else "",
            "actor": actor,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "spec": json.dumps(vars(spec)),
        },
    )
    client.expire(key, TEST_KEEP_S)


def _url(kwargs: Mapping[str, Any]) -> str:
    """The client's own connection as a URL, for the job (a unix socket or host and port, db, password)."""
    auth = f":{kwargs['password']}@" if kwargs.get("password") else ""
    if path := kwargs.get("path"):
        return f"unix://{auth}{path}?db={kwargs.get('db', 0)}"
    return f"redis://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def read_test(client: redis.Redis, namespace: str, test_id: str) -> dict[str, Any] | None:
    """The stored test (status, file, text, versions, actor, spec, result or error), or None."""
    if not re.fullmatch(r"[0-9a-f]{16}", test_id):
        return None
    raw = cast(dict[bytes, bytes], client.hgetall(_test_key(namespace, test_id)))
    if not raw:
        return None
    record: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    record["id"] = test_id
    record["spec"] = json.loads(record["spec"])
    if "result" in record:
        record["result"] = json.loads(record["result"])
    return record


def finish_test(
    client: redis.Redis, namespace: str, test_id: str, result: Mapping[str, Any] | None, error: str = ""
) -> None:
    """The job's last step: its result (or error) in the test's hash, and the running flag freed."""
    key = _test_key(namespace, test_id)
    fields = (
        {"status": "done", "result": json.dumps(result)}
        if result is not None
        else {"status": "failed", "error": error}
    )
    client.hset(key, mapping=fields)
    client.eval(_UNLOCK, 1, f"{namespace}:console:test:running", test_id)


def file_diff(old: str, new: str, file: str) -> str:
    """A unified diff of a rules file, for the audit record and the page."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"live/{file}", f"tested/{file}"
    )
    return "".join(lines)


def promote(
    client: redis.Redis,
    namespace: str,
    rules_dir: Path,
    test: Mapping[str, Any],
    live_version: str,
    reload_rules: Callable[[], dict[str, Any]],
    record: Callable[[str, str, Mapping[str, object]], str],
) -> str:
    """Write a finished test's file into the live directory and reload; returns the new version.

    RuleChangeError 409 when the test has not finished or the live set changed since it was tested,
    500 when the reload refuses the file (the old text is then written back).
    """
    if test.get("status") != "done":
        raise RuleChangeError(409, "only a finished test can be promoted")
    if test["base_version"] != live_version:
        raise RuleChangeError(409, "the live set changed since this test: test again")
    path = rules_dir / str(test["file"])
    with rules_lock(client, namespace):
        old = path.read_text(encoding="utf-8") if path.exists() else None
        diff = file_diff(old or "", str(test["text"]), str(test["file"]))
        detail = {"file": test["file"], "old_version": live_version, "test": test["id"]}
        record("rules.promote", str(test["file"]), {**detail, "diff": diff[:AUDIT_DIFF_BYTES]})
        atomic_write(path, str(test["text"]))
        outcome = reload_rules()
        if not outcome.get("reloaded"):
            if old is None:
                path.unlink()
            else:
                atomic_write(path, old)
            reload_rules()
            record(
                "rules.promote",
                str(test["file"]),
                {**detail, "outcome": "refused", "errors": outcome.get("errors", [])},
            )
            raise RuleChangeError(
                500, f"the reload refused the file, the live set is unchanged: {outcome.get('errors')}"
            )
        version = str(outcome["rules_version"])
        record("rules.promote", str(test["file"]), {**detail, "outcome": "done", "new_version": version})
    return version
