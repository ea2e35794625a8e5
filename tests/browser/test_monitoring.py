"""The model monitoring page in Chromium: the service's own sink has run the job (a few seconds after it
started), the page shows that run; payments scored now and stored by the sink appear in the next run's
figures, read from the summary in Redis."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime

from payloads import score_request
from playwright.sync_api import Page, expect

from antifraud.engine.monitor_job import MonitorJob
from antifraud.engine.review.queue import ReviewQueue
from antifraud.engine.settings import Settings
from antifraud.engine.store import open_store

from .conftest import Console, shot, sign_in

#: the sink's first run comes FIRST_RUN_DELAY_S (5 s) after it starts; a busy machine takes longer
WAIT_S = 30.0
PAYMENTS = 6


def _open_until_run(page: Page, console: Console) -> None:
    """The monitoring page, reloaded until it shows a run."""
    deadline = time.monotonic() + WAIT_S
    while not page.locator("#run").count() and time.monotonic() < deadline:
        time.sleep(0.5)
        page.reload()
    expect(page.locator("#run")).to_contain_text("Last run")


def _score_now(console: Console) -> list[str]:
    """Score PAYMENTS payments stamped now, the last one reviewed (over 9,000); their ids."""
    suffix = uuid.uuid4().hex[:8]
    ids = [f"br-mon-{suffix}-{i}" for i in range(PAYMENTS)]
    stamp = datetime.now(UTC).isoformat()
    with console.api() as api:
        for i, tx in enumerate(ids):
            amount = 9500.0 if i == PAYMENTS - 1 else 20.0 + i
            body = score_request(tx, 0, timestamp=stamp, amount=amount, card_id=f"card_mon_{suffix}")
            assert api.post("/v1/score", json=body).status_code == 200
    return ids


def _run_job_once_stored(console: Console, ids: list[str]) -> int:
    """Once the sink has stored every payment and queued the reviewed one (its hook runs after the
    write), run the job as the sink does (its next turn is minutes away); the rows it read."""
    settings = dataclasses.replace(
        Settings(), redis_url=console.stack.redis_url, store_url=str(console.stack.dir / "data" / "decisions")
    )
    store = open_store(settings.store_url)
    with console.stack.redis_client() as client:
        queue = ReviewQueue.from_settings(client, settings)
        try:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and (
                queue.case(ids[-1]) is None or any(store.decision(tx) is None for tx in ids)
            ):
                time.sleep(0.3)
        finally:
            store.close()
        return MonitorJob(client, settings).run_once()["rows"]


def test_the_monitoring_page_shows_the_latest_run(console: Console, page: Page) -> None:
    sign_in(page, console, "alice")
    page.get_by_role("link", name="Monitoring").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Model monitoring")
    expect(page.get_by_role("link", name="Monitoring")).to_have_attribute("aria-current", "page")
    _open_until_run(page, console)  # the service's own run

    rows = _run_job_once_stored(console, _score_now(console))
    assert rows >= PAYMENTS
    page.reload()
    expect(page.locator("#run")).to_contain_text(f"{rows:,} decisions of payments since")
    expect(page.get_by_role("heading", level=2, name="Flags")).to_be_visible()
    expect(page.get_by_role("table", name="Verdict mix")).to_be_visible()
    figures = page.get_by_role("table", name="Score, degraded answers and the review queue")
    expect(figures.get_by_role("row", name="open review cases").get_by_role("cell")).not_to_have_text("0")
    expect(page.get_by_role("table", name="Feature drift, highest PSI first")).to_be_visible()
    shot(page, "monitoring")
