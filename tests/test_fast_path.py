"""The raw ASGI handler of POST /v1/score (engine/api/fast_path.py) answers as the FastAPI route did.

One table of requests is sent, in order, to the app as served and to the same app with FastAPI
serving the route (`create_app(raw_score_route=False)`), each on the same real redis-server emptied
first: status, headers and bodies must be equal byte for byte (a 200's timings excepted, they are
measured), and so must the request counters, the verdict counters, the stage histograms' counts, the
decision stream (the flagged decision's contributions logged after its answer) and the OpenAPI
document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from fastapi.testclient import TestClient
from payloads import score_request
from prometheus_client.parser import text_string_to_metric_families

from antifraud.engine.api import create_app
from antifraud.engine.auth import new_key
from antifraud.engine.settings import ROOT, Settings

PAN_SECRET = "test-secret-0123456789"
MAX_BODY = 4096
DENY_LISTED_IP = "203.0.113.7"  # in rules/lists/blocked_ips.txt: a block, explained after the answer


@dataclass(frozen=True)
class Call:
    """One request of the table: who sends it (a key's name, or a raw Authorization value) and what."""

    name: str
    key: str | None  # a name from the keys fixture; None: no Authorization header
    body: Callable[[], bytes | Iterator[bytes]]  # built at send time (a timestamp ahead of the clock)
    method: str = "POST"
    path: str = "/v1/score"
    raw_authorization: str | None = None


def _json(**overrides: Any) -> Callable[[], bytes]:
    return lambda: json.dumps(score_request(**overrides)).encode()


def _ahead() -> bytes:
    ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return json.dumps(score_request("tx-ahead", timestamp=ahead)).encode()


def _chunked_too_large() -> Iterator[bytes]:
    # no Content-Length: the limit is found while the body is read
    yield b'{"transaction_id": "tx-big", "ip": "'
    for _ in range(MAX_BODY // 512 + 1):
        yield b"1" * 512
    yield b'"}'


CALLS = [
    Call("new payment", "scorer", _json(txid="tx-1")),
    Call("retry", "scorer", _json(txid="tx-1")),
    Call("same id, another amount", "scorer", _json(txid="tx-1", amount=99.0)),
    Call("flagged (deny-listed IP)", "scorer", _json(txid="tx-2", minute=1, ip=DENY_LISTED_IP)),
    Call("test payment", "scorer", _json(txid="tx-3", minute=2, test=True)),
    Call("admin key", "admin", _json(txid="tx-4", minute=3)),
    Call("scoped key, its merchant", "m1", _json(txid="tx-5", minute=4)),
    Call("not JSON", "scorer", lambda: b'{"transaction_id": "tx-6", '),
    Call("empty body", "scorer", lambda: b""),
    Call("JSON, not an object", "scorer", lambda: b"[1, 2]"),
    Call("a field missing", "scorer", _json(txid="tx-7", amount=None)),
    Call("several fields invalid", "scorer", _json(txid="", amount=-1, currency="eur", channel="fax")),
    Call("card_id and pan", "scorer", _json(txid="tx-8", pan="4539148803436467")),
    Call("timestamp ahead of the clock", "scorer", _ahead),
    Call("no key", None, _json(txid="tx-9")),
    Call("unknown key", None, _json(txid="tx-9"), raw_authorization="Bearer afk_nobody"),
    Call("not a bearer", None, _json(txid="tx-9"), raw_authorization="Basic Zm9vOmJhcg=="),
    Call("analyst role", "analyst", _json(txid="tx-9")),
    Call("scoped key, another merchant", "m2", _json(txid="tx-9")),
    Call("over the limit, declared", "scorer", _json(txid="tx-10", ip="1" * MAX_BODY)),
    Call("over the limit, chunked", "scorer", _chunked_too_large),
    Call("GET", "scorer", lambda: b"", method="GET"),
    Call("trailing slash", "scorer", _json(txid="tx-11"), path="/v1/score/"),
]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    made = {
        "scorer": new_key(path, "checkout", "scorer"),
        "analyst": new_key(path, "risk-team", "analyst"),
        "admin": new_key(path, "ops", "admin"),
        "m1": new_key(path, "shop-m1", "scorer", ["m_1"]),
        "m2": new_key(path, "shop-m2", "scorer", ["m_2"]),
    }
    return path, made


@pytest.fixture
def settings(keys: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", PAN_SECRET)
    return Settings(
        redis_url=None,
        model_dir=ROOT / "models" / "default",
        rules_dir=ROOT / "rules",
        api_keys_file=keys[0],
        max_body_bytes=MAX_BODY,
        budget_ms=1000,  # room on a loaded test machine: these tests are not about Redis failing
    )


@dataclass
class Run:
    """What one app answered to the table, and what it counted and logged meanwhile."""

    answers: list[tuple[str, int, list[tuple[str, str]], bytes]]
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    stream: list[dict[str, Any]]
    openapi: bytes


def _comparable_body(status: int, body: bytes) -> bytes:
    """The body as sent, but for a 200's timings (measured): each stage's milliseconds become 0."""
    return re.sub(rb'("[a-z]+_ms"):[-+.0-9e]+', rb"\1:0", body) if status == 200 else body


def _counted(metrics_text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counters and the histograms' counts (not their sums and buckets, which are times)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_bucket", "_created")):
                continue
            if family.type in ("counter", "histogram"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _run(settings: Settings, client: redis.Redis, keys: dict[str, str], raw_score_route: bool) -> Run:
    client.flushall()
    app = create_app(settings, client=client, raw_score_route=raw_score_route)
    answers = []
    with TestClient(app, follow_redirects=False) as http:
        for call in CALLS:
            headers = {"Content-Type": "application/json"}
            if call.key is not None:
                headers["Authorization"] = f"Bearer {keys[call.key]}"
            elif call.raw_authorization is not None:
                headers["Authorization"] = call.raw_authorization
            r = http.request(call.method, call.path, content=call.body(), headers=headers)
            kept = sorted(
                (k, v) for k, v in r.headers.items() if k != "content-length" or r.status_code != 200
            )
            answers.append((call.name, r.status_code, kept, _comparable_body(r.status_code, r.content)))
        counters = _counted(http.get("/metrics").text)
        openapi = http.get("/openapi.json").content
    stream = []
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange("af:decisions"))
    for _, fields in entries:
        entry = {k.decode(): json.loads(v) for k, v in fields.items()}
        for record in entry.values():
            if isinstance(record, dict):
                record.pop("timings", None)
                record.pop("decided_at", None)
        stream.append(entry)
    return Run(answers, counters, stream, openapi)


def test_the_fast_path_answers_counts_and_logs_as_the_fastapi_route(
    settings: Settings, redis_client: redis.Redis, keys: tuple[Path, dict[str, str]]
) -> None:
    fastapi = _run(settings, redis_client, keys[1], raw_score_route=False)
    fast = _run(settings, redis_client, keys[1], raw_score_route=True)
    statuses = [status for _, status, _, _ in fastapi.answers]
    # the table covers what it claims to (on the FastAPI route, the reference)
    assert statuses[:14] == [200, 200, 409, 200, 200, 200, 200, 400, 400, 422, 422, 422, 422, 422], statuses
    assert statuses[14:] == [401, 401, 401, 403, 403, 413, 413, 405, 307]
    for before, after in zip(fastapi.answers, fast.answers, strict=True):
        assert after == before, before[0]
    assert fast.counters == fastapi.counters
    scored = {
        labels: v for (name, labels), v in fast.counters.items() if name == "antifraud_http_requests_total"
    }
    assert scored[(("method", "POST"), ("route", "/v1/score"), ("status", "200"))] == 6
    assert scored[(("method", "POST"), ("route", "/v1/score"), ("status", "413"))] == 2
    assert fast.counters[("antifraud_stage_seconds_count", (("stage", "explain"),))] == 1
    assert fast.stream == fastapi.stream
    # tx-1, tx-2 and its contributions logged after its answer, tx-4, tx-5 (a test payment is not logged)
    assert [list(entry) for entry in fast.stream] == [["d"], ["d"], ["c"], ["d"], ["d"]]
    assert fast.openapi == fastapi.openapi


def test_the_fast_path_serves_the_route_without_fastapis_router(
    settings: Settings, redis_client: redis.Redis, keys: tuple[Path, dict[str, str]]
) -> None:
    """Taken off FastAPI's router, the route still answers: the fast path served it, not FastAPI."""
    headers = {"Authorization": f"Bearer {keys[1]['scorer']}"}
    for raw_score_route, status in ((True, 200), (False, 404)):
        redis_client.flushall()
        app = create_app(settings, client=redis_client, raw_score_route=raw_score_route)
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/v1/score"]
        with TestClient(app) as http:
            assert http.post("/v1/score", json=score_request(), headers=headers).status_code == status
