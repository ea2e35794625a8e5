"""`antifraud serve --redis redis+cluster://...` on a real Redis Cluster (3 primaries, each with a
replica): scoring, a retry answered from its record, feedback, the sink draining both to the Parquet
store, and a review case reaching the console's queue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console_helpers import rules_with_review
from payloads import score_request
from reliability.helpers import read_log

from antifraud.engine.redis_server import LocalCluster
from antifraud.engine.redis_url import connect, on_cluster
from antifraud.engine.review.queue import ReviewQueue
from antifraud.engine.settings import Settings
from antifraud.engine.stack import ServiceStack


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(3, replicas=1).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _wait(done: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_cluster_url_gives_a_cluster_client(cluster: LocalCluster) -> None:
    client = connect(cluster.url)
    try:
        assert on_cluster(client)
        assert len(cluster.primary_ports()) == 3
        assert client.ping()
    finally:
        client.close()


def test_serve_on_a_cluster_scores_logs_takes_feedback_and_feeds_the_review_queue(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    rules = rules_with_review(tmp_path)
    with ServiceStack(redis_url=cluster.url, keys={"checkout": "scorer"}, rules_dir=rules) as stack:
        auth = {"Authorization": f"Bearer {stack.keys['checkout']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{stack.port}", headers=auth, timeout=10) as http:
            answers = [
                http.post("/v1/score", json=score_request(f"cl-{i}", minute=i, card_id=f"card_{i % 4}"))
                for i in range(12)
            ]
            assert [a.status_code for a in answers] == [200] * 12
            assert all(a.json()["degraded"] == [] for a in answers), [a.json()["degraded"] for a in answers]
            # a retry is answered from its idempotency record: the same answer, not scored again
            retry = http.post("/v1/score", json=score_request("cl-3", minute=3, card_id="card_3"))
            assert retry.status_code == 200
            assert retry.json()["risk_score"] == answers[3].json()["risk_score"]
            assert retry.json()["verdict"] == answers[3].json()["verdict"]
            feedback = http.post(
                "/v1/feedback",
                json={
                    "transaction_id": "cl-5",
                    "kind": "label",
                    "label": "fraud",
                    "reported_at": "2026-03-02T00:00:00Z",
                },
            )
            assert feedback.status_code == 202 and feedback.json()["matched"] is True
            review = http.post("/v1/score", json=score_request("cl-big", minute=20, amount=9500.0))
            assert review.json()["verdict"] == "review"

        client = stack.redis_client()
        try:
            store = str(stack.dir / "data" / "decisions")

            def drained() -> bool:
                view = read_log(client, store)
                return (
                    view.buffered_decisions == 0
                    and view.buffered_feedback == 0
                    and len(view.store_decision_rows) == 13
                )

            _wait(drained, "the sink did not write every decision and feedback to the store")
            view = read_log(client, store)
            assert sorted(view.store_decision_rows) == sorted([f"cl-{i}" for i in range(12)] + ["cl-big"])
            assert set(view.store_decision_rows.values()) == {1}  # the retry logged nothing
            assert [f["transaction_id"] for f in view.feedback.values()] == ["cl-5"]
            # the decision log's keys share the decisions stream's slot; the feature state is spread
            assert sum(1 for n in client.get_primaries() if n.redis_connection.dbsize() > 0) == 3  # type: ignore[attr-defined]

            queue = ReviewQueue.from_settings(client, Settings())
            _wait(lambda: queue.case("cl-big") is not None, "the review case did not reach the queue")
            assert queue.claim("cl-big", "ana").status == "claimed"
        finally:
            client.close()
