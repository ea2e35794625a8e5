"""The scoring service's contract, through FastAPI's test client against a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from payloads import score_request
from sinks import drain

from antifraud.engine.api import create_app
from antifraud.engine.auth import new_key
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.verdicts import IDENTITY


@pytest.fixture
def service(
    model_dir: Path, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, dict[str, str], redis.Redis]]:
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", "test-secret-0123456789")
    keys = tmp_path / "keys.yaml"
    scorer, admin = new_key(keys, "checkout", "scorer"), new_key(keys, "ops", "admin")
    settings = Settings(redis_url=None, model_dir=model_dir, rules_dir=ROOT / "rules", api_keys_file=keys)
    with TestClient(create_app(settings, client=redis_client)) as client:
        yield client, {"scorer": scorer, "admin": admin}, redis_client


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_score_answers_a_verdict_with_reasons_and_versions(service) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = service
    response = client.post("/v1/score", json=score_request(), headers=_auth(keys["scorer"]))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["verdict"] in ("allow", "challenge", "review", "block")
    # a model without recorded thresholds is on the identity scale: the score x 100, rounded down
    assert 0.0 <= body["score"] <= 1.0 and body["risk_score"] == IDENTITY.of(body["score"])
    assert body["model_version"].startswith("test-model-") and body["rules_version"]
    assert body["degraded"] == []
    stored = client.get("/v1/decisions/tx-1", headers=_auth(keys["scorer"])).json()
    assert stored["verdict"] == body["verdict"] and "card_count_24h" in stored["features"]


def test_auth_refuses_missing_wrong_and_underprivileged_keys(service) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = service
    assert client.post("/v1/score", json=score_request()).status_code == 401
    assert client.post("/v1/score", json=score_request(), headers=_auth("afk_wrong")).status_code == 401
    assert client.post("/admin/reload-rules", headers=_auth(keys["scorer"])).status_code == 403
    assert client.post("/admin/reload-rules", headers=_auth(keys["admin"])).status_code == 200


def test_the_key_is_checked_before_the_body_is_read(service) -> None:  # type: ignore[no-untyped-def]
    """An unauthenticated caller cannot probe what the service would accept: 401 whatever the body."""
    client, keys, _ = service
    for path in ("/v1/score", "/v1/feedback"):
        for body, status in ((b"not json", 400), (b'{"transaction_id": 1}', 422), (b"x" * 10, 400)):
            assert client.post(path, content=body).status_code == 401
            assert client.post(path, content=body, headers=_auth(keys["scorer"])).status_code == status
    refused = client.post("/v1/score", content=b"{}", headers=_auth(keys["scorer"])).json()
    assert refused["detail"][0]["loc"][0] == "body"


def test_a_retry_returns_the_stored_decision_and_counts_once(service) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = service
    first = client.post("/v1/score", json=score_request(), headers=_auth(keys["scorer"])).json()
    again = client.post("/v1/score", json=score_request(), headers=_auth(keys["scorer"])).json()
    first.pop("timings")
    again.pop("timings")
    assert again == first
    later = client.post(
        "/v1/score",
        json=score_request("tx-2", 1),
        headers=_auth(keys["scorer"]),
    )
    stored = client.get("/v1/decisions/tx-2", headers=_auth(keys["scorer"])).json()
    assert later.status_code == 200 and stored["features"]["card_count_24h"] == 1.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": -1}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"channel": "phone"}, "channel"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_input_gets_422_naming_the_field(service, change: dict[str, object], field: str) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = service
    response = client.post("/v1/score", json=score_request(**change), headers=_auth(keys["scorer"]))
    assert response.status_code == 422
    assert any(field in map(str, error["loc"]) for error in response.json()["detail"])


def test_oversized_body_gets_413(service) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = service
    response = client.post("/v1/score", content=b"{" + b" " * 20_000 + b"}", headers=_auth(keys["scorer"]))
    assert response.status_code == 413


def test_feedback_is_stored_even_for_an_unknown_payment(service) -> None:  # type: ignore[no-untyped-def]
    client, keys, rds = service
    client.post("/v1/score", json=score_request(), headers=_auth(keys["scorer"]))
    known = client.post(
        "/v1/feedback",
        headers=_auth(keys["scorer"]),
        json={
            "transaction_id": "tx-1",
            "kind": "outcome",
            "outcome": "declined",
            "decline_code": "05",
            "reported_at": "2026-03-01T12:00:02Z",
        },
    )
    unknown = client.post(
        "/v1/feedback",
        headers=_auth(keys["scorer"]),
        json={
            "transaction_id": "nobody",
            "kind": "label",
            "label": "fraud",
            "reported_at": "2026-03-02T00:00:00Z",
        },
    )
    assert known.status_code == 202 and known.json()["matched"] is True
    assert unknown.status_code == 202 and unknown.json()["matched"] is False
    assert rds.xlen("af:feedback") == 2
    later = client.post(
        "/v1/score",
        json=score_request("tx-3", 10),
        headers=_auth(keys["scorer"]),
    )
    assert later.status_code == 200
    stored = client.get("/v1/decisions/tx-3", headers=_auth(keys["scorer"])).json()
    assert stored["features"]["card_declines_1h"] == 1.0
    # a decision's feedback is read from the store, once the sink has written it
    drain(rds, client.app.state.settings.store_url)  # type: ignore[attr-defined]
    assert (
        client.get("/v1/decisions/tx-1", headers=_auth(keys["scorer"])).json()["feedback"][0]["outcome"]
        == "declined"
    )


def test_feedback_of_every_kind_is_stored_with_the_same_fields(service) -> None:  # type: ignore[no-untyped-def]
    """Each kind takes its own fields; the stored record has them all (null where they do not apply)."""
    client, keys, rds = service
    for body in (
        {"kind": "label", "label": "legitimate"},
        {"kind": "outcome", "outcome": "approved", "decline_code": None},
        {"kind": "refund"},
        {"kind": "cancel"},
    ):
        event = {"transaction_id": " tx-9 ", "reported_at": "2026-03-01T13:00:02+01:00", **body}
        response = client.post("/v1/feedback", json=event, headers=_auth(keys["scorer"]))
        assert response.status_code == 202, response.text
    records = [json.loads(fields[b"e"]) for _, fields in rds.xrange("af:feedback")]
    assert [r["kind"] for r in records] == ["label", "outcome", "refund", "cancel"]
    for record in records:
        assert list(record) == [
            *("transaction_id", "kind", "label", "outcome", "decline_code", "result", "reported_at"),
            "received_at",
        ]
        assert record["transaction_id"] == "tx-9" and record["reported_at"] == "2026-03-01T12:00:02Z"
    assert [(r["label"], r["outcome"], r["decline_code"], r["result"]) for r in records] == [
        ("legitimate", None, None, None),
        (None, "approved", None, None),
        (None, None, None, None),
        (None, None, None, None),
    ]


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"kind": "label"}, "label", "label is required when kind is 'label'"),
        ({"kind": "outcome", "decline_code": "05"}, "outcome", "outcome is required when kind is 'outcome'"),
        ({"kind": "label", "label": "maybe"}, "label", "'fraud', 'chargeback' or 'legitimate'"),
        ({"kind": "refund", "label": "fraud"}, "label", "sent only when kind is 'label'"),
        ({"kind": "cancel", "decline_code": "05"}, "decline_code", "sent only when kind is 'outcome'"),
        ({}, "kind", "kind is required: 'label', 'outcome', 'refund', 'cancel' or 'challenge'"),
        ({"kind": "chargeback"}, "kind", "'label', 'outcome', 'refund', 'cancel' or 'challenge'"),
        ({"kind": "challenge"}, "result", "required when kind is 'challenge': 'passed' or 'failed'"),
        ({"kind": "challenge", "result": "timeout"}, "result", "'passed' or 'failed'"),
        ({"kind": "refund", "result": "failed"}, "result", "sent only when kind is 'challenge'"),
        ({"kind": "refund", "reported_at": 1772366402}, "reported_at", "RFC 3339"),
        ({"kind": "refund", "reported_at": "1772366402"}, "reported_at", "RFC 3339"),
        ({"kind": "refund", "reported_at": "2026-03-01T12:00:02"}, "reported_at", "UTC offset"),
        ({"kind": "refund", "transaction_id": " \u00a0"}, "transaction_id", "at least 1 character"),
        ({"kind": "refund", "transaction_id": " " + "t" * 128}, "transaction_id", "at most 128"),
    ],
)
def test_bad_feedback_gets_422_naming_the_field_and_what_to_send(  # type: ignore[no-untyped-def]
    service, change: dict[str, object], field: str, says: str
) -> None:
    client, keys, rds = service
    event = {"transaction_id": "tx-1", "reported_at": "2026-03-01T12:00:02Z", **change}
    response = client.post("/v1/feedback", json=event, headers=_auth(keys["scorer"]))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field] and says in error["msg"], error
    assert rds.xlen("af:feedback") == 0


def test_redis_down_is_a_degraded_verdict_within_budget(model_dir: Path, tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, socket_timeout=0.03, socket_connect_timeout=0.03)
    settings = Settings(
        redis_url=None,
        model_dir=model_dir,
        rules_dir=ROOT / "rules",
        api_keys_file=None,
        fail_policy="review",
    )
    with TestClient(create_app(settings, client=client)) as http:
        server.stop()
        for i in range(3):
            response = http.post("/v1/score", json=score_request(f"down-{i}"))
            assert response.status_code == 200
            body = response.json()
            assert body["degraded"] and "redis" in body["degraded"][0]
            assert body["verdict"] in ("review", "block")
            # the budget is 50 ms; a wide margin for a shared machine
            assert body["timings"]["total_ms"] < 1000
        assert http.get("/ready").status_code == 503
        np.testing.assert_equal(http.get("/health").status_code, 200)


def test_reading_a_decision_explains_its_score(service) -> None:  # type: ignore[no-untyped-def]
    client, keys, _ = service
    answer = client.post("/v1/score", json=score_request(), headers=_auth(keys["scorer"])).json()
    assert answer["reasons"]["model"] == []  # never computed on the payment's path
    stored = client.get("/v1/decisions/tx-1", headers=_auth(keys["scorer"])).json()
    contributions = stored["reasons"]["model"]
    assert contributions and all({"feature", "value", "contribution"} <= set(c) for c in contributions)
    names = {c["feature"] for c in contributions}
    assert names <= set(stored["features"])
