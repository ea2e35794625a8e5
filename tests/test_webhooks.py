"""Webhooks: the endpoints file, the signature scheme, and the delivery worker against a real receiver on
loopback (an `http.server` that checks every signature and fails when told to): retries with backoff,
dead letters, order per transaction while other transactions flow, a restart, a standby; then the
console's webhooks page and its audited retry. The worker's base delay is 0.05 s; nothing asserts a
duration."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import yaml
from console_helpers import check_page, csrf_token, rules_with_review, sign_in
from fastapi.testclient import TestClient
from payloads import score_request

from antifraud.engine.api import create_app
from antifraud.engine.auth import new_key
from antifraud.engine.decisions import BufferBound
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.stack import ServiceStack, free_port
from antifraud.engine.webhooks.config import Endpoints, WebhookConfigError, load_endpoints, new_secret
from antifraud.engine.webhooks.outbox import Outbox
from antifraud.engine.webhooks.signing import sign, verify
from antifraud.engine.webhooks.worker import HookWorker, dead_letters, retry_dead

SECRET = "whsec_" + "s" * 40
OLD_SECRET = "whsec_" + "o" * 40


@dataclass
class Receiver:
    """A webhook receiver on loopback: records each request, checks its signature, and answers
    `script[event id]`'s statuses in turn (then 200)."""

    secrets: list[str]
    script: dict[str, list[int]] = field(default_factory=dict)
    seen: list[dict[str, object]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        event = orjson.loads(body)
        with self.lock:
            statuses = self.script.get(event["id"], [])
            status = statuses.pop(0) if statuses else 200
            self.seen.append(
                {
                    "id": event["id"],
                    "type": event["type"],
                    "tx": event["data"].get("transaction_id"),
                    "status": status,
                    "signed": verify(self.secrets, headers["antifraud-signature"], body),
                    "delivery": headers["antifraud-delivery"],
                    "event": headers["antifraud-event"],
                    "keys": sorted(event),
                }
            )
        return status

    def delivered(self) -> list[str]:
        """The event ids answered 2xx, in the order they were answered."""
        with self.lock:
            return [str(s["id"]) for s in self.seen if 200 <= int(str(s["status"])) < 300]

    def tries(self, event_id: str) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s["id"] == event_id)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver([SECRET])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = got.answer({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield got
    server.shutdown()
    server.server_close()


def write_endpoints(path: Path, entries: list[dict[str, object]], mode: int = 0o600) -> Path:
    path.write_text(yaml.safe_dump(entries))
    path.chmod(mode)
    return path


@pytest.fixture
def endpoints_file(tmp_path: Path, receiver: Receiver) -> Path:
    events = ["decision.review", "decision.block", "review.resolved", "label.received"]
    return write_endpoints(
        tmp_path / "webhooks.yaml", [{"name": "bus", "url": receiver.url, "events": events, "secret": SECRET}]
    )


def publish(outbox: Outbox, tx: str, kind: str = "decision.review", merchant: str = "m_1") -> str:
    event_id = f"{kind}:{tx}" if kind != "label.received" else f"{kind}:{tx}-{time.monotonic_ns()}"
    assert outbox.publish(kind, event_id, tx, {"transaction_id": tx, "merchant_id": merchant})  # type: ignore[arg-type]
    return event_id


def worker(client: redis.Redis, path: Path, **options: object) -> HookWorker:
    settings: dict[str, object] = {"base_delay_s": 0.05, "max_delay_s": 0.2, "timeout_s": 2.0}
    settings.update(options)
    return HookWorker(client, Endpoints(path, every_s=0), **settings)  # type: ignore[arg-type]


def run_until(hooks: HookWorker, done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        hooks.run_once(block_ms=20)


# -- the scheme


def test_a_signature_verifies_with_its_secret_only_in_time_and_for_its_body() -> None:
    body = b'{"id":"decision.review:tx-1"}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100), "a changed body"
    assert not verify(OLD_SECRET, header, body, now=1_700_000_100), "another secret"
    assert not verify(SECRET, header, body, now=1_700_000_301), "older than the tolerance: a replay"
    assert not verify(SECRET, "v1=" + header.split("v1=")[1], body), "no timestamp"
    rotating = sign([SECRET, OLD_SECRET], body)
    assert rotating.count("v1=") == 2
    assert verify(OLD_SECRET, rotating, body) and verify([SECRET], rotating, body), (
        "either side of a rotation"
    )


def test_the_endpoints_file_is_checked_strictly(tmp_path: Path) -> None:
    good = {"name": "bus", "url": "https://hooks.example/x", "events": ["decision.block"], "secret": SECRET}
    assert load_endpoints(write_endpoints(tmp_path / "a.yaml", [good]))[0].secrets == (SECRET,)
    with pytest.raises(WebhookConfigError, match="chmod 600"):
        load_endpoints(write_endpoints(tmp_path / "b.yaml", [good], mode=0o644))
    for bad, why in (
        ({**good, "secret": "short"}, "at least 32 characters"),
        ({**good, "merchant": ["m_1"]}, "unknown field"),
        ({**good, "events": ["decision.allow"]}, "unknown event"),
        ({**good, "url": "ftp://x"}, "http:// or https://"),
    ):
        with pytest.raises(WebhookConfigError, match=why):
            load_endpoints(write_endpoints(tmp_path / "c.yaml", [bad]))
    assert len(new_secret()) >= 32
    scoped = load_endpoints(write_endpoints(tmp_path / "d.yaml", [{**good, "merchants": ["m_1"]}]))[0]
    assert scoped.wants("decision.block", {"merchant_id": "m_1"})
    assert not scoped.wants("decision.block", {"merchant_id": "m_2"})
    assert not scoped.wants("decision.review", {"merchant_id": "m_1"})


# -- delivery


def test_events_are_signed_retried_and_kept_in_order_per_transaction_while_others_flow(
    redis_client: redis.Redis, receiver: Receiver, endpoints_file: Path
) -> None:
    endpoints = Endpoints(endpoints_file)
    outbox = Outbox(redis_client, endpoints.subscribed)
    first = publish(outbox, "tx-1")
    second = publish(outbox, "tx-1", "review.resolved")
    third = publish(outbox, "tx-1", "label.received")
    other = publish(outbox, "tx-2", "decision.block")
    receiver.script[first] = [500, 503, 502]  # three failures, then 200
    hooks = worker(redis_client, endpoints_file)
    try:
        run_until(hooks, lambda: len(receiver.delivered()) == 4, "every event delivered")
        run_until(hooks, lambda: redis_client.xlen("af:hooks:outbox") == 0, "the outbox trimmed")
    finally:
        hooks.close()
    assert receiver.tries(first) == 4
    order = receiver.delivered()
    assert [e for e in order if e != other] == [first, second, third], "tx-1's events in their order"
    assert order.index(other) == 0, "tx-2 was not held up by tx-1's retries"
    assert all(s["signed"] for s in receiver.seen), "every request verifies with the receiver's secret"
    assert all(s["delivery"] == s["id"] and s["event"] == s["type"] for s in receiver.seen)
    assert receiver.seen[0]["keys"] == ["created", "data", "id", "type"]
    pending = redis_client.xpending("af:hooks:outbox", "hooks")["pending"]
    assert pending == 0 and not redis_client.exists("af:hooks:attempts", "af:hooks:done", "af:hooks:retry")


def test_a_failing_delivery_becomes_a_dead_letter_which_frees_the_next_and_can_be_sent_again(
    redis_client: redis.Redis, receiver: Receiver, endpoints_file: Path
) -> None:
    outbox = Outbox(redis_client, Endpoints(endpoints_file).subscribed)
    failing = publish(outbox, "tx-1")
    after = publish(outbox, "tx-1", "review.resolved")
    gone = publish(outbox, "tx-2")
    receiver.script[failing] = [500] * 3
    receiver.script[gone] = [410]
    hooks = worker(redis_client, endpoints_file, max_attempts=3)
    try:
        run_until(hooks, lambda: after in receiver.delivered(), "the next event of tx-1")
        run_until(hooks, lambda: redis_client.xlen("af:hooks:dead") == 2, "two dead letters")
        assert receiver.tries(failing) == 3 and receiver.tries(gone) == 1, "a 410 is not retried"
        letters = {d["event"]: d for d in dead_letters(redis_client)}
        assert letters[failing]["status"] == "500" and "3 attempts failed" in letters[failing]["error"]
        assert letters[gone]["status"] == "410" and letters[gone]["endpoint"] == "bus"
        assert retry_dead(redis_client, letters[failing]["id"])
        assert redis_client.xlen("af:hooks:dead") == 1, "sent again: no longer a dead letter"
        run_until(hooks, lambda: failing in receiver.delivered(), "the dead letter sent again")
    finally:
        hooks.close()
    assert not retry_dead(redis_client, letters[failing]["id"]), "gone from the dead letters"


def test_the_workers_metrics_count_deliveries_attempts_dead_letters_backlog_and_latency(
    redis_client: redis.Redis, receiver: Receiver, endpoints_file: Path
) -> None:
    outbox = Outbox(redis_client, Endpoints(endpoints_file).subscribed)
    retried, gone, fine = publish(outbox, "tx-1"), publish(outbox, "tx-2"), publish(outbox, "tx-3")
    receiver.script[retried] = [503]
    receiver.script[gone] = [410]
    hooks = worker(redis_client, endpoints_file)
    value = hooks.metrics.registry.get_sample_value
    try:
        hooks.trim()  # nothing read yet: the whole outbox is the backlog
        assert value("antifraud_hooks_outbox_backlog") == 3
        run_until(hooks, lambda: {retried, fine} <= set(receiver.delivered()), "two events delivered")
        run_until(hooks, lambda: value("antifraud_hooks_outbox_backlog") == 0, "the backlog gauge at 0")
        assert value("antifraud_hooks_lock_held") == 1 and value("antifraud_hooks_retrying") == 0
    finally:
        hooks.close()
    assert value("antifraud_hooks_lock_held") == 0, "released: a standby may take over"
    assert value("antifraud_hooks_deliveries_total", {"outcome": "delivered"}) == 2
    assert value("antifraud_hooks_deliveries_total", {"outcome": "dead_letter"}) == 1
    assert value("antifraud_hooks_dead_letters_total", {"reason": "gone"}) == 1
    assert value("antifraud_hooks_dead_letters_total", {"reason": "attempts"}) == 0
    attempts = {
        r: value("antifraud_hooks_attempts_total", {"result": r}) for r in ("2xx", "4xx", "5xx", "error")
    }
    assert attempts == {"2xx": 2, "4xx": 1, "5xx": 1, "error": 0}
    assert value("antifraud_hooks_post_seconds_count") == 4
    assert value("antifraud_hooks_delivery_seconds_count") == 2
    assert 0 < value("antifraud_hooks_delivery_seconds_sum") < 60  # type: ignore[operator]


def test_antifraud_hooks_serves_its_metrics_on_the_metrics_port(
    redis_server: EmbeddedRedis, endpoints_file: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "antifraud.engine.cli", "hooks", "--redis", redis_server.url]
    hooks = subprocess.Popen(
        [*command, "--webhooks", str(endpoints_file), "--metrics-port", str(port)], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
                if "antifraud_hooks_lock_held 1.0" in text:
                    break
            except httpx.TransportError:
                pass
            assert hooks.poll() is None, hooks.stderr.read() if hooks.stderr else ""
            assert time.monotonic() < deadline, "no metrics served"
            time.sleep(0.1)
        assert 'antifraud_hooks_deliveries_total{outcome="delivered"} 0.0' in text
        assert "antifraud_hooks_outbox_backlog 0.0" in text
    finally:
        hooks.send_signal(signal.SIGTERM)
        hooks.wait(timeout=30)
    assert hooks.returncode == 0


def test_a_restarted_worker_resumes_the_pending_events_in_order(
    redis_client: redis.Redis, receiver: Receiver, endpoints_file: Path
) -> None:
    outbox = Outbox(redis_client, Endpoints(endpoints_file).subscribed)
    first = publish(outbox, "tx-1")
    second = publish(outbox, "tx-1", "review.resolved")
    receiver.script[first] = [500] * 4
    hooks = worker(redis_client, endpoints_file)
    # a round may send a retry too on a busy machine: stop after the first failure or two
    run_until(hooks, lambda: receiver.tries(first) >= 1, "a first failed attempt")
    hooks.close()  # stopped with tx-1's first event due for a retry
    assert redis_client.xpending("af:hooks:outbox", "hooks")["pending"] == 2
    (entry, _), _ = redis_client.xrange("af:hooks:outbox")
    attempts = redis_client.hget("af:hooks:attempts", f"bus|{entry.decode()}")
    assert int(attempts) == receiver.tries(first), "the attempts are counted in Redis"
    again = worker(redis_client, endpoints_file)
    try:
        run_until(hooks=again, done=lambda: len(receiver.delivered()) == 2, what="both delivered")
    finally:
        again.close()
    assert receiver.delivered() == [first, second] and receiver.tries(first) == 5


def test_a_standby_delivers_nothing_until_the_holder_stops(
    redis_client: redis.Redis, receiver: Receiver, endpoints_file: Path
) -> None:
    outbox = Outbox(redis_client, Endpoints(endpoints_file).subscribed)
    holder = worker(redis_client, endpoints_file)
    standby = worker(redis_client, endpoints_file)
    try:
        assert holder.run_once(block_ms=10) and not standby.run_once(block_ms=10)
        published = [publish(outbox, f"tx-{i}") for i in range(3)]
        run_until(holder, lambda: len(receiver.delivered()) == 3, "the holder's deliveries")
        assert not standby.run_once(block_ms=10)
        holder.close()  # gives the lock up
        later = publish(outbox, "tx-9", "decision.block")
        run_until(standby, lambda: later in receiver.delivered(), "the standby taking over")
    finally:
        standby.close()
    assert sorted(receiver.delivered()) == sorted([*published, later]), "each event once"


def test_an_endpoint_scoped_to_merchants_gets_only_their_events(
    redis_client: redis.Redis, receiver: Receiver, tmp_path: Path
) -> None:
    path = write_endpoints(
        tmp_path / "webhooks.yaml",
        [
            {
                "name": "m1",
                "url": receiver.url,
                "events": ["decision.block"],
                "secret": SECRET,
                "merchants": ["m_1"],
            }
        ],
    )
    outbox = Outbox(redis_client, Endpoints(path).subscribed)
    mine = publish(outbox, "tx-1", "decision.block", "m_1")
    publish(outbox, "tx-2", "decision.block", "m_2")
    hooks = worker(redis_client, path)
    try:
        hooks.run_once(block_ms=10)
        run_until(
            hooks,
            lambda: (
                redis_client.xpending("af:hooks:outbox", "hooks")["pending"] == 0
                and redis_client.xlen("af:hooks:outbox") == 0
            ),
            "both entries done",
        )
    finally:
        hooks.close()
    assert receiver.delivered() == [mine]


# -- the console's page


@pytest.fixture
def console(
    redis_client: redis.Redis, tmp_path: Path, endpoints_file: Path
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    keys_file = tmp_path / "keys.yaml"
    keys = {"ops": new_key(keys_file, "ops", "admin"), "alice": new_key(keys_file, "alice", "analyst")}
    settings = Settings(
        redis_url=None,
        model_dir=ROOT / "models" / "default",
        rules_dir=ROOT / "rules",
        api_keys_file=keys_file,
    )
    settings.webhooks_file = endpoints_file
    with TestClient(create_app(settings, client=redis_client), client=("127.0.0.1", 50000)) as client:
        yield client, keys


def test_the_webhooks_page_lists_dead_letters_and_an_admin_sends_one_again_audited(
    console: tuple[TestClient, dict[str, str]], redis_client: redis.Redis
) -> None:
    client, keys = console
    outbox = client.app.state.outbox  # type: ignore[attr-defined]
    full = Outbox(redis_client, outbox.subscribed, bound=BufferBound(max_entries=1, max_age_s=0))
    assert full.publish("decision.block", "decision.block:tx-6", "tx-6", {"transaction_id": "tx-6"})
    assert not full.publish("decision.block", "decision.block:tx-7", "tx-7", {"transaction_id": "tx-7"})
    ((dead_id, _),) = redis_client.xrange("af:hooks:dead")

    sign_in(client, keys["alice"])
    assert client.get("/console/webhooks").status_code == 403, "admins only"
    client.post("/console/signout", data={"csrf": csrf_token(client.get("/console/audit").text)})

    sign_in(client, keys["ops"])
    page = client.get("/console/webhooks")
    assert page.status_code == 200 and "decision.block:tx-7" in page.text and "outbox full" in page.text
    assert "<td>bus</td>" in page.text, "the configured endpoint"
    check_page(page.text)
    retry = f"/console/webhooks/dead/{dead_id.decode()}/retry"
    assert client.post(retry, data={"csrf": "forged"}).status_code == 403
    answer = client.post(retry, data={"csrf": csrf_token(page.text)}, follow_redirects=False)
    assert answer.status_code == 303
    assert redis_client.xlen("af:hooks:dead") == 0 and redis_client.xlen("af:hooks:outbox") == 2
    (entry,) = [
        orjson.loads(f[b"a"]) for _, f in redis_client.xrange("af:audit") if b"hooks.retry" in f[b"a"]
    ]
    assert (entry["actor"], entry["subject"]) == ("ops", "decision.block:tx-7")
    assert client.post(retry, data={"csrf": csrf_token(page.text)}).status_code == 404


# -- serve runs the worker


def test_serve_runs_the_delivery_worker_and_a_review_reaches_the_receiver(
    receiver: Receiver, endpoints_file: Path, tmp_path: Path
) -> None:
    rules = rules_with_review(tmp_path)
    env = {"ANTIFRAUD_WEBHOOKS": str(endpoints_file)}
    with ServiceStack(keys={"checkout": "scorer"}, rules_dir=rules, env=env) as stack:
        hooks_pid = stack.hooks_pid()
        assert hooks_pid is not None and hooks_pid not in stack.worker_pids()
        assert f"console: http://127.0.0.1:{stack.port}/console/" in stack.log_text()
        # scored, logged, written by the sink, published by its hook, delivered by the worker
        answer = httpx.post(
            f"http://127.0.0.1:{stack.port}/v1/score",
            json=score_request("tx-big", amount=9500.0),
            headers={"Authorization": f"Bearer {stack.keys['checkout']}"},
        )
        assert answer.json()["verdict"] == "review"
        deadline = time.monotonic() + 60
        while "decision.review:tx-big" not in receiver.delivered():
            assert time.monotonic() < deadline, "the review did not reach the receiver"
            time.sleep(0.05)
        stack.stop_server()
        assert not (stack.dir / "data" / "hooks.pid").exists()
    (seen,) = receiver.seen
    assert seen["signed"] and seen["tx"] == "tx-big"
