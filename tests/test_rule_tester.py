"""The console's rule tester and promote, through the real app on a real redis-server with a Parquet
store: errors inline under their lines (the checker of `antifraud rules check`); the log backtest in
process (hits, frauds only one rule caught, reviews per day, cost and the changed payments) and once as
the subprocess the page starts; a history job in process; promote atomic, reloaded and audited, refused
on a moved version (409) and to an analyst (403)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis
from console_app import RULES, ConsoleApp, console_app
from console_helpers import check_page, csrf_token

from antifraud.engine.audit import AuditLog
from antifraud.engine.rule_changes import RuleChangeError, RuleTestSpec, candidate, read_test, store_test
from antifraud.engine.rule_tests import backtest_log, run
from antifraud.engine.rules import load_rules, rule_names
from antifraud.engine.store import open_store
from antifraud.features.spec import load_spec
from antifraud.training.history import write_history
from antifraud.training.simulator import simulate

#: the candidate: reviews from 5,000 and blocks 6,000-7,000
CANDIDATE = (
    RULES.replace("when: amount > 9000", "when: amount > 5000")
    + """
  - id: mid_block
    description: A band of amounts a fraud ring uses
    when: amount > 6000 and amount < 7000
    action: block
    reason: RING
"""
)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def app(redis_client: redis.Redis, model_dir: Path, tmp_path: Path) -> Iterator[ConsoleApp]:
    with console_app(redis_client, model_dir, tmp_path) as running:
        for i, amount in enumerate((20.0, 6500.0, 5500.0, 9500.0, 6200.0)):
            when = (NOW - timedelta(minutes=30 - i)).isoformat()
            running.score(f"tx-{i}", 0, amount=amount, timestamp=when, card_id=f"card_{i}")
        label = {"transaction_id": "tx-1", "kind": "label", "label": "fraud", "reported_at": NOW.isoformat()}
        assert (
            running.http.post("/v1/feedback", json=label, headers=running.bearer("checkout")).status_code
            == 202
        )
        running.drain()
        running.sign_in("ops")
        yield running


def _form(app: ConsoleApp) -> str:
    page = app.http.get("/console/rules/test")
    assert page.status_code == 200
    check_page(page.text)
    return csrf_token(page.text)


def test_errors_show_under_their_lines(app: ConsoleApp) -> None:
    bad = RULES.replace("when: amount > 9000", "when: amount >> 9000").replace(
        "action: block", "action: explode"
    )
    page = app.http.post(
        "/console/rules/test", data={"csrf": _form(app), "file": "rules.yaml", "text": bad, "period": "1 h"}
    )
    assert page.status_code == 422
    check_page(page.text)
    lines = bad.splitlines()
    when_line = next(i for i, line in enumerate(lines, 1) if "amount >> 9000" in line)
    action_line = next(i for i, line in enumerate(lines, 1) if "explode" in line)
    for n in (when_line, action_line):
        assert f'<li id="L{n}" class="has-error" aria-describedby="E{n}">' in page.text
        assert f'<ul id="E{n}"><li class="error">line {n}: ' in page.text
    assert app.redis.get("af:console:test:running") is None  # nothing started


def test_the_log_backtest_in_process(app: ConsoleApp, tmp_path: Path) -> None:
    names = load_spec().feature_names
    candidate_dir = tmp_path / "candidate"
    candidate_dir.mkdir()
    (candidate_dir / "rules.yaml").write_text(CANDIDATE)
    candidate, live = load_rules(candidate_dir, names), load_rules(app.settings.rules_dir, names)
    store = open_store(app.settings.store_url)
    decisions = [d for batch in store.iter_decisions() for d in batch]
    store.close()
    for d in decisions:
        d["label"] = "fraud" if d["transaction_id"] == "tx-1" else None  # type: ignore[typeddict-unknown-key]
    costs = {"review_cost": 5.0, "block_cost_factor": 0.1, "challenge_cost": 1.0}
    result = backtest_log(decisions, candidate, live, "review", costs)  # type: ignore[arg-type]
    assert result["payments"] == 5 and result["frauds"] == 1
    hits = {r["rule_id"]: r for r in result["rules"]}
    assert hits["big_amount"]["hits"] == 4 and hits["mid_block"]["hits"] == 2
    assert hits["mid_block"]["frauds"] == 1 and hits["mid_block"]["good_hits"] == 1
    # tx-1 (6,500) is also reviewed by big_amount, so no rule caught it alone
    assert result["frauds_only"] == {"big_amount": 0, "card_known_fraud": 0, "mid_block": 0}
    assert sum(result["reviews_per_day"].values()) == 2  # tx-2 and tx-3 (the last half hour: one day or two)
    assert sum(result["live_reviews_per_day"].values()) == 1
    assert (
        result["verdicts"]["block"]["payments"] == 2
        and result["comparison"]["baseline_verdicts"]["block"]["payments"] == 0
    )
    changed = {c["transaction_id"]: (c["before"], c["after"]) for c in result["changed"]}
    assert changed == {"tx-1": ("allow", "block"), "tx-2": ("allow", "review"), "tx-4": ("allow", "block")}
    assert result["comparison"]["rules_added"] == ["mid_block"] and result["comparison"]["rules_changed"] == [
        "big_amount"
    ]
    assert (
        result["cost"]["fraud_allowed"] == 0.0
        and result["comparison"]["cost_difference"]["fraud_allowed"] == -6500.0
    )
    # a rule alone: remove big_amount's review of the band, and the ring rule caught tx-1 by itself
    alone = CANDIDATE.replace("when: amount > 5000", "when: amount > 9000")
    (candidate_dir / "rules.yaml").write_text(alone)
    result = backtest_log(decisions, load_rules(candidate_dir, names), live, "review", costs)  # type: ignore[arg-type]
    assert result["frauds_only"]["mid_block"] == 1


def _wait(app: ConsoleApp, url: str) -> str:
    for _ in range(600):
        page = app.http.get(url)
        assert page.status_code == 200, page.text
        if 'id="status">Running' not in page.text:
            return page.text
        time.sleep(0.2)
    raise AssertionError("the rule test did not finish within 2 minutes")


def test_a_test_runs_as_a_subprocess_and_an_admin_promotes_it(app: ConsoleApp) -> None:
    started = app.http.post(
        "/console/rules/test",
        data={"csrf": _form(app), "file": "rules.yaml", "text": CANDIDATE, "period": "1 h"},
        follow_redirects=False,
    )
    assert started.status_code == 303, started.text
    url = started.headers["location"]
    page = _wait(app, url)
    check_page(page)
    assert 'id="status">Done.' in page, page
    assert "Logged decisions: 5 payments, 1 frauds" in page
    assert '<a href="/console/decisions/tx-1">tx-1</a>' in page and "3 payments change verdict" in page
    assert "+  - id: mid_block" in page  # the diff
    live = app.http.get("/console/rules").text
    assert 'id="rule-big_amount"' in live and "mid_block" not in live
    rules_file = app.settings.rules_dir / "rules.yaml"
    # an analyst may not promote
    app.sign_in("alice")
    token = csrf_token(app.http.get(url).text)
    assert app.http.post(f"{url}/promote", data={"csrf": token}).status_code == 403
    app.sign_in("ops")
    token = csrf_token(app.http.get(url).text)
    promoted = app.http.post(f"{url}/promote", data={"csrf": token}, follow_redirects=False)
    assert promoted.status_code == 303, promoted.text
    assert rules_file.read_text() == CANDIDATE
    assert not [p for p in app.settings.rules_dir.iterdir() if p.name.startswith(".")]
    rules_page = app.http.get(promoted.headers["location"]).text
    check_page(rules_page)
    assert 'id="rule-mid_block"' in rules_page and "Promoted" in rules_page
    assert (
        app.score("tx-9", 0, amount=6600.0, card_id="card_9", timestamp=NOW.isoformat())["verdict"] == "block"
    )
    records = [r for r in AuditLog(app.redis).latest(50) if r["action"] in ("rules.test", "rules.promote")]
    assert [r["action"] for r in reversed(records)] == ["rules.test", "rules.promote", "rules.promote"]
    assert (
        "+  - id: mid_block" in str(records[1]["detail"]["diff"])
        and records[0]["detail"]["outcome"] == "done"
    )
    # the same test again: the live set moved since
    refused = app.http.post(f"{url}/promote", data={"csrf": token})
    assert refused.status_code == 409 and "the live set changed since this test" in refused.text


def test_a_history_job_in_process(app: ConsoleApp, tmp_path: Path) -> None:
    history = simulate(days=7, cards=150, merchants=20, seed=5)
    write_history(history, tmp_path / "history.parquet")
    days = pd.to_datetime(history["timestamp"], utc=True).dt.date
    start, end = days.min() + timedelta(days=3), days.max()
    settings = app.settings
    names = rule_names(load_spec().feature_names)
    cand = candidate(settings.data_dir, settings.rules_dir, "rules.yaml", CANDIDATE, names)
    assert cand.ruleset is not None and not cand.errors
    spec = RuleTestSpec(
        live_dir=str(settings.rules_dir),
        candidate_dir=str(cand.directory),
        file="rules.yaml",
        hours=None,
        history=str(tmp_path / "history.parquet"),
        start=start.isoformat(),
        end=end.isoformat(),
        store_url=settings.store_url,
        model_dir=None,
        fail_policy="review",
        max_decisions=1000,
    )
    store_test(app.redis, "af", cand, spec, "live-version", "ops")
    with pytest.raises(RuleChangeError, match="a test by ops is running"):
        store_test(app.redis, "af", cand, spec, "live-version", "ops")
    result = run(app.redis, "af", cand.id)["history"]
    in_period = int(((days >= start) & (days < end)).sum())
    assert result["source"] == "history" and result["payments"] == in_period
    assert sum(result["verdicts"][v]["payments"] for v in result["verdicts"]) == in_period
    assert result["comparison"]["rules_added"] == ["mid_block"]
    assert set(result["reviews_per_day"]) == {
        (start + timedelta(days=i)).isoformat() for i in range((end - start).days)
    }
    stored = read_test(app.redis, "af", cand.id)
    assert stored is not None and stored["status"] == "done" and stored["result"]["history"] == result
    assert app.redis.get("af:console:test:running") is None  # the next test may start
