"""The service with its console for HTTP tests of the review queue and the decision pages: keys of each
role (two analysts, one scoped to a merchant), rules that review amounts over 9,000 (`RULES`; a test
may give others, such as `CHALLENGE_RULES`), a Parquet store,
and the real sink with the console's after-write hook to move decisions (`ConsoleApp.drain`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from console_helpers import sign_in
from fastapi.testclient import TestClient
from payloads import score_request

from antifraud.engine.api import create_app
from antifraud.engine.auth import new_key
from antifraud.engine.review.feed import ConsoleFeed
from antifraud.engine.settings import Settings
from antifraud.engine.sink import Sink
from antifraud.engine.store import open_store

#: the TestClient's address: the console signs in over plain HTTP from loopback only
LOOPBACK = ("127.0.0.1", 50000)
#: key name -> (role, merchants)
KEYS = {
    "checkout": ("scorer", ()),
    "alice": ("analyst", ()),
    "bob": ("analyst", ()),
    "ops": ("admin", ()),
    "shop2": ("analyst", ("m_2",)),
}
RULES = """
score_bands: {review: 0.9999, block: 0.99999}
rules:
  - id: big_amount
    description: Amounts over 9,000 need a person
    when: amount > 9000
    action: review
    reason: BIG_AMOUNT
  - id: card_known_fraud
    description: A card with a fraud label reported in the last 30 days
    when: card_frauds_30d >= 1
    action: block
    reason: KNOWN_FRAUD_CARD
"""

#: `RULES` and a rule that challenges amounts between 5,000 and 6,000
CHALLENGE_RULES = (
    RULES
    + """  - id: large_amount
    description: Amounts between 5,000 and 6,000 need a second factor
    when: amount > 5000 and amount <= 6000
    action: challenge
    reason: LARGE_AMOUNT
"""
)


@dataclass
class ConsoleApp:
    """A running app (TestClient) with its keys, Redis client and store."""

    http: TestClient
    keys: dict[str, str]
    redis: redis.Redis
    settings: Settings

    def score(self, txid: str, minute: float = 0, **payment: object) -> dict[str, object]:
        """Score a payment with the scorer key; its answer."""
        answer = self.http.post(
            "/v1/score", json=score_request(txid, minute, **payment), headers=self.bearer("checkout")
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def bearer(self, name: str) -> dict[str, str]:
        """The Authorization header of a key."""
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def sign_in(self, name: str) -> None:
        """Sign in the client as `name` (signing out whoever was in)."""
        self.http.cookies.clear()
        assert sign_in(self.http, self.keys[name]).status_code == 303

    def drain(self) -> None:
        """Run the real sink, with the console's hook, until both buffers are written."""
        store = open_store(self.settings.store_url)
        feed = ConsoleFeed.from_settings(self.redis, self.settings, None, None, store)
        try:
            sink = Sink(self.redis, store, block_ms=10, linger_ms=0, after_write=feed.after_write)
            for _ in range(100):
                if not sink.run_once() and not any(sink.lag().values()):
                    return
            raise AssertionError(f"the sink did not drain: {sink.lag()}")
        finally:
            store.close()


@contextmanager
def console_app(
    redis_client: redis.Redis, model_dir: Path, tmp_path: Path, rules_text: str = RULES
) -> Iterator[ConsoleApp]:
    """The app on `redis_client`, with its own rules (`rules_text`), keys and store under `tmp_path`."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text(rules_text)
    keys_file = tmp_path / "keys.yaml"
    keys = {name: new_key(keys_file, name, role, merchants) for name, (role, merchants) in KEYS.items()}
    settings = Settings(
        redis_url=None,
        model_dir=model_dir,
        rules_dir=rules,
        api_keys_file=keys_file,
        store_url=str(tmp_path / "store"),
    )
    with TestClient(create_app(settings, client=redis_client), client=LOOPBACK) as http:
        yield ConsoleApp(http, keys, redis_client, settings)
