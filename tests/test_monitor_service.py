"""The model monitor in the service (engine/monitor_job.py): payments scored through the real app on a
real redis-server, written to a Parquet store by the real sink with the console's hook, then measured
against a reference profile made from a first batch of them. One run stores the summary and /metrics
shows its gauges; a batch whose amounts are shifted raises the amount's PSI and flags it; without a
profile the verdict mix, degraded share and queue are still reported; interval 0 starts nothing; the
read is bounded and pages through payments that share a timestamp; one sink per interval runs it, and
a refused thresholds file turns it off; the console's page shows the run."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from console_app import ConsoleApp, console_app
from console_helpers import check_page
from payloads import T0
from prometheus_client.parser import text_string_to_metric_families

from antifraud.engine import monitor_job
from antifraud.engine.metrics import Metrics
from antifraud.engine.monitor_job import MonitorJob, start_monitor
from antifraud.engine.monitor_summary import SummaryGauges, read_summary, summary_key, write_summary
from antifraud.engine.monitoring import ReferenceProfile, Thresholds, build_profile
from antifraud.engine.store import DecisionQuery, open_store

#: flagged from this many rows on (the default 500 would need more payments than a test should score)
THRESHOLDS = Thresholds(min_rows=50)
BATCH = 120
#: minutes after T0 when a batch started at T0 has been scored
SPAN = BATCH // 3 + 1


@pytest.fixture
def own_model(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the suite's model, whose directory the test may give a reference profile."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


@pytest.fixture
def app(
    redis_client: redis.Redis, own_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConsoleApp]:
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", "test-secret-0123456789")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    (tmp_path / "app").mkdir()
    with console_app(redis_client, own_model, tmp_path / "app") as running:
        running.sign_in("alice")
        yield running


def score_batch(app: ConsoleApp, prefix: str, first_minute: float, scale: float = 1.0, seed: int = 7) -> None:
    """Score BATCH payments 20 s apart, 40 minutes: inside the default hour's window (amounts
    log-normal around 50, times `scale`; 30 cards, 5 merchants, 3 devices), then write them to the
    store through the sink."""
    rng = np.random.default_rng(seed)
    for i in range(BATCH):
        app.score(
            f"{prefix}-{i}",
            first_minute + i / 3,
            amount=round(float(rng.lognormal(np.log(50), 0.8)) * scale, 2),
            card_id=f"card_{rng.integers(30)}",
            merchant_id=f"m_{rng.integers(5)}",
            device_id=f"dev_{rng.integers(3)}",
        )
    app.drain()


def profile_from_store(app: ConsoleApp, model: Path) -> ReferenceProfile:
    """A reference profile of every decision in the store, saved in `model` (as training writes one)."""
    store = open_store(app.settings.store_url)
    try:
        decisions = store.search(DecisionQuery(limit=100_000))
    finally:
        store.close()
    names = list(decisions[0]["features"])
    features = {
        n: np.array([np.nan if (v := d["features"][n]) is None else v for d in decisions]) for n in names
    }
    scores = np.array([d["score"] for d in decisions], dtype=float)
    version = decisions[0]["model_version"]
    assert version is not None
    profile = build_profile(version, ("2026-02-01", "2026-03-01"), features, scores)
    profile.save(model)
    return profile


def job(app: ConsoleApp, **settings: object) -> MonitorJob:
    """The job on the app's Redis and store."""
    replaced = dataclasses.replace(app.settings, **settings)  # type: ignore[arg-type]
    return MonitorJob(app.redis, replaced, THRESHOLDS)


def gauges(app: ConsoleApp) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The antifraud_monitor_* samples of the worker's /metrics."""
    text = app.http.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("antifraud_monitor_")
    }


def test_one_run_stores_the_summary_and_metrics_show_its_gauges(app: ConsoleApp, own_model: Path) -> None:
    assert not any(gauges(app))  # no run yet: no monitor gauge
    score_batch(app, "ref", 0)
    profile = profile_from_store(app, own_model)
    summary = job(app).run_once(now=T0 + timedelta(minutes=SPAN))
    assert summary["rows"] == BATCH and summary["drift_rows"] == BATCH and not summary["capped"]
    assert summary["profile"] is not None and summary["profile"]["model_version"] == profile.model_version
    assert summary["note"] == ""
    # the same payments as the reference: nothing drifted
    assert {f["feature"] for f in summary["features"]} == set(profile.features)
    assert max(f["psi"] for f in summary["features"]) < 0.01
    assert summary["score_psi"] is not None and summary["score_psi"] < 0.01
    assert summary["flags"] == []
    assert abs(sum(summary["verdicts"].values()) - 1) < 1e-9 and summary["degraded_share"] == 0.0
    assert read_summary(app.redis, "af") == summary
    assert int(app.redis.strlen(summary_key("af"))) < 16_384  # type: ignore[arg-type]  # bounded: a few KB

    seen = gauges(app)
    assert seen[("antifraud_monitor_rows", ())] == BATCH
    assert seen[("antifraud_monitor_feature_psi", (("feature", "amount"),))] < 0.01
    assert ("antifraud_monitor_score_psi", ()) in seen
    assert seen[("antifraud_monitor_degraded_share", ())] == 0.0
    assert seen[("antifraud_monitor_review_queue_open", ())] == summary["queue_open"]
    assert 0 <= seen[("antifraud_monitor_last_run_age_seconds", ())] < 60
    assert seen[("antifraud_monitor_flags", ())] == 0


def test_a_shifted_batch_raises_the_amounts_psi_and_is_flagged(app: ConsoleApp, own_model: Path) -> None:
    score_batch(app, "ref", 0)
    profile_from_store(app, own_model)
    score_batch(app, "big", 24 * 60, scale=20.0, seed=8)  # a day later, amounts twenty times larger
    summary = job(app).run_once(now=T0 + timedelta(minutes=24 * 60 + SPAN))
    assert summary["rows"] == BATCH  # the window holds the shifted batch only
    by_feature = {f["feature"]: f for f in summary["features"]}
    assert by_feature["amount"]["psi"] > THRESHOLDS.psi_alert
    assert summary["features"][0]["psi"] >= by_feature["amount"]["psi"]  # highest PSI first
    flagged = {(f.kind, f.subject) for f in summary["flags"]}
    assert ("feature_psi", "amount") in flagged
    assert summary["flags"][0].level == "alert"
    assert read_summary(app.redis, "af") == summary  # the flags come back from their JSON as they went
    seen = gauges(app)
    assert seen[("antifraud_monitor_feature_psi", (("feature", "amount"),))] > THRESHOLDS.psi_alert
    assert seen[("antifraud_monitor_flags", ())] == len(summary["flags"])


def test_without_a_profile_it_reports_the_rest_and_says_so_once(
    app: ConsoleApp, caplog: pytest.LogCaptureFixture
) -> None:
    score_batch(app, "tx", 0)
    app.score("big-1", SPAN, amount=9500.0)  # reviewed (big_amount): a case in the queue
    app.drain()
    run = job(app)
    now = T0 + timedelta(minutes=SPAN + 1)
    with caplog.at_level(logging.WARNING, logger="antifraud.monitor"):
        summary = run.run_once(now=now)
        run.run_once(now=now)
    assert [r.message for r in caplog.records if "no reference profile" in r.message] == [
        f"model monitoring: no reference profile in {app.settings.model_dir}: reporting the verdict mix, "
        "degraded share and queue only"
    ]
    assert summary["profile"] is None and summary["note"].startswith("no reference profile")
    assert summary["features"] == [] and summary["score_psi"] is None
    assert summary["rows"] == BATCH + 1 and summary["verdicts"]["review"] == pytest.approx(1 / (BATCH + 1))
    assert summary["queue_open"] == 1 and summary["queue_oldest_age_s"] is not None
    assert ("antifraud_monitor_score_psi", ()) not in gauges(app)
    assert gauges(app)[("antifraud_monitor_review_queue_open", ())] == 1


def test_the_read_is_bounded_to_the_newest_and_pages_through_equal_times(
    app: ConsoleApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(40):  # four payments per minute: equal payment times across page boundaries
        app.score(f"tx-{i:02d}", i // 4)
    app.drain()
    monkeypatch.setattr(monitor_job, "PAGE_ROWS", 7)
    now = T0 + timedelta(minutes=10)
    assert job(app).run_once(now=now)["rows"] == 40  # every one, once
    bounded = job(app, monitor_max_rows=25).run_once(now=now)
    assert bounded["rows"] == 25 and bounded["capped"]


def test_the_thread_runs_every_interval_and_interval_zero_starts_nothing(app: ConsoleApp) -> None:
    stop = threading.Event()
    assert start_monitor(app.redis, dataclasses.replace(app.settings, monitor_interval_s=0), stop) is None
    thread = start_monitor(app.redis, dataclasses.replace(app.settings, monitor_interval_s=0.3), stop)
    assert thread is not None
    try:
        deadline = time.monotonic() + 20
        while read_summary(app.redis, "af") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first = read_summary(app.redis, "af")
        assert first is not None and first["rows"] == 0
        while (now := read_summary(app.redis, "af")) == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert now is not None and now["at"] > first["at"]  # it ran again
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_every_process_renders_the_same_gauges_under_multiprocess_metrics(
    app: ConsoleApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job(app).run_once()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    text = Metrics(shared=SummaryGauges(app.redis, "af")).render().decode()
    assert "antifraud_monitor_rows 0.0" in text and "antifraud_monitor_last_run_age_seconds" in text


def test_the_console_page_shows_the_latest_run(app: ConsoleApp, own_model: Path) -> None:
    empty = app.http.get("/console/monitoring")
    assert empty.status_code == 200
    check_page(empty.text)
    assert (
        "No monitoring run yet." in empty.text
        and 'href="/console/monitoring" aria-current="page"' in empty.text
    )
    score_batch(app, "ref", 0)
    profile_from_store(app, own_model)
    score_batch(app, "big", 24 * 60, scale=20.0, seed=8)
    job(app).run_once(now=T0 + timedelta(minutes=24 * 60 + SPAN))
    page = app.http.get("/console/monitoring")
    assert page.status_code == 200
    check_page(page.text)
    html = page.text
    # flags first, then the features by PSI, then the other figures
    assert html.index('id="flags"') < html.index('id="features"') < html.index('id="figures"')
    assert '<strong class="error">alert</strong>: amount: PSI' in html
    assert f"{BATCH} decisions of payments since" in html
    features = html[html.index('id="features"') : html.index('id="figures"')]
    assert '<th scope="row">amount</th>' in features
    app.sign_in("shop2")
    assert app.http.get("/console/monitoring").status_code == 403  # unscoped keys only, as the day page


def test_a_run_older_than_two_intervals_is_called_stale(app: ConsoleApp) -> None:
    summary = job(app).run_once()
    assert 'role="alert"' not in app.http.get("/console/monitoring").text
    summary["at"] = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    write_summary(app.redis, "af", summary)
    page = app.http.get("/console/monitoring").text
    assert "more than two intervals old: is the decision sink running?" in page
    assert "(2 h 0 min ago)" in page
    assert gauges(app)[("antifraud_monitor_last_run_age_seconds", ())] >= 7200


def test_one_sink_per_interval_runs_it_and_a_refused_thresholds_file_turns_it_off(
    app: ConsoleApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = job(app, monitor_interval_s=60), job(app, monitor_interval_s=60)
    assert first.due() and not second.due()  # another sink on the same Redis waits for the next interval
    assert 0 < int(app.redis.pttl("af:monitor:lock")) <= 54_000  # type: ignore[arg-type]
    bad = tmp_path / "thresholds.yaml"
    bad.write_text("psi_alrt: 0.3\n")
    settings = dataclasses.replace(app.settings, monitor_thresholds=bad)
    with caplog.at_level(logging.ERROR, logger="antifraud.monitor"):
        assert start_monitor(app.redis, settings, threading.Event()) is None
    assert "model monitoring is off" in caplog.text and "psi_alrt" in caplog.text
    with pytest.raises(ValueError, match="monitor_interval_s"):
        dataclasses.replace(app.settings, monitor_interval_s=-1)
