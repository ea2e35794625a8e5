"""The webhook endpoints file (`ANTIFRAUD_WEBHOOKS`): where events are POSTed, which ones, and signed how.

A YAML list, one entry per endpoint:

    - name: risk-bus
      url: https://hooks.example.com/antifraud
      events: [decision.review, decision.block, review.resolved, label.received]
      secret: whsec_...            # at least 32 characters; [new, old] while rotating
      merchants: [m_1]             # optional: only events about these merchants

The file holds secrets, so it must be readable by its owner alone (mode 0600), like an SSH key; an
unknown field is an error (a misspelt `merchant:` would otherwise send every merchant's events). It is
reloaded live: `Endpoints` looks at the file at most once a second and keeps the last good version
when a new one is refused. `merchants` filters by the event's `data.merchant_id`: `review.resolved` and
`label.received` carry none, so an endpoint scoped to merchants receives only decision events.
"""

from __future__ import annotations

import logging
import secrets
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import redis
import yaml

from antifraud.engine.webhooks.outbox import EVENT_TYPES, Outbox

log = logging.getLogger("antifraud.webhooks")

#: the shortest secret accepted (characters)
MIN_SECRET: Final = 32
_FIELDS: Final = frozenset({"name", "url", "events", "secret", "merchants"})


class WebhookConfigError(ValueError):
    """The endpoints file is refused; the message names the file, the entry and the reason."""


@dataclass(frozen=True)
class Endpoint:
    """One receiver of webhook events."""

    name: str
    url: str
    events: frozenset[str]
    secrets: tuple[str, ...]  # every one signs a delivery (one `v1=` each); more than one while rotating
    merchants: frozenset[str] | None = None  # None: every merchant's events

    def wants(self, event_type: str, data: dict[str, object]) -> bool:
        """Whether this endpoint receives an event of this type and data."""
        if event_type not in self.events:
            return False
        return self.merchants is None or data.get("merchant_id") in self.merchants


def new_secret() -> str:
    """A new endpoint secret (`antifraud webhooks secret`): 256 random bits."""
    return "whsec_" + secrets.token_urlsafe(32)


def _strings(value: object, where: str, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise WebhookConfigError(f"{where}: {what} must be a non-empty string or list of strings")
    return items


def load_endpoints(path: Path) -> list[Endpoint]:
    """Read the endpoints file strictly; WebhookConfigError says what is wrong."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise WebhookConfigError(f"{path}: no such endpoints file") from exc
    if stat.S_IMODE(mode) & 0o077:
        raise WebhookConfigError(
            f"{path}: holds secrets, so it must be readable by its owner alone (chmod 600 {path})"
        )
    try:
        entries = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as exc:
        raise WebhookConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(entries, list):
        raise WebhookConfigError(f"{path}: must be a list of endpoints")
    endpoints: list[Endpoint] = []
    for i, e in enumerate(entries, start=1):
        if not isinstance(e, dict) or {"name", "url", "events", "secret"} - set(e):
            raise WebhookConfigError(f"{path}: entry {i} needs name, url, events and secret")
        where = f"{path}: entry {i} ({e['name']})"
        if unknown := set(e) - _FIELDS:
            raise WebhookConfigError(
                f"{where}: unknown field(s) {sorted(map(str, unknown))}; known: {sorted(_FIELDS)}"
            )
        if not isinstance(e["name"], str) or not e["name"] or "|" in e["name"]:
            raise WebhookConfigError(f"{where}: name must be a non-empty string without '|'")
        if any(other.name == e["name"] for other in endpoints):
            raise WebhookConfigError(f"{where}: a second endpoint of that name")
        url = e["url"]
        if (
            not isinstance(url, str)
            or urlsplit(url).scheme not in ("http", "https")
            or not urlsplit(url).netloc
        ):
            raise WebhookConfigError(f"{where}: url must be an http:// or https:// URL")
        events = _strings(e["events"], where, "events")
        if unknown_events := set(events) - set(EVENT_TYPES):
            raise WebhookConfigError(
                f"{where}: unknown event(s) {sorted(unknown_events)}; known: {', '.join(EVENT_TYPES)}"
            )
        keys = _strings(e["secret"], where, "secret")
        if any(len(key) < MIN_SECRET for key in keys):
            raise WebhookConfigError(
                f"{where}: a secret must have at least {MIN_SECRET} characters (`antifraud webhooks secret`)"
            )
        merchants = frozenset(_strings(e["merchants"], where, "merchants")) if "merchants" in e else None
        endpoints.append(Endpoint(e["name"], url, frozenset(events), tuple(keys), merchants))
    return endpoints


def _fingerprint(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode)


class Endpoints:
    """The configured endpoints, reloaded when the file changes (looked at once every `every_s` at most).

    A file refused on reload keeps the previous endpoints (the error is logged); at the start it stops
    the start. With no file (`path` None) there are no endpoints and nothing is ever published.
    """

    def __init__(self, path: Path | None, every_s: float = 1.0) -> None:
        self.path = path
        self.every_s = every_s
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._seen = _fingerprint(path) if path is not None else None
        self._endpoints: list[Endpoint] = load_endpoints(path) if path is not None else []

    def current(self) -> list[Endpoint]:
        """The endpoints now, reloaded first if the file changed."""
        if self.path is None:
            return []
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.every_s:
                self._checked = now
                seen = _fingerprint(self.path)
                if seen != self._seen:
                    self._seen = seen
                    try:
                        self._endpoints = load_endpoints(self.path)
                        log.info("webhook endpoints reloaded: %d endpoint(s)", len(self._endpoints))
                    except (WebhookConfigError, OSError, UnicodeDecodeError) as exc:
                        log.error("webhook endpoints file refused, the previous endpoints stay: %s", exc)
            return self._endpoints

    def subscribed(self, event_type: str) -> bool:
        """Whether some endpoint takes events of this type (the outbox publishes only those)."""
        return any(event_type in e.events for e in self.current())

    def named(self, name: str) -> Endpoint | None:
        """The endpoint of that name, if it is still configured."""
        return next((e for e in self.current() if e.name == name), None)

    def targets(self, event_type: str, data: dict[str, object]) -> Sequence[Endpoint]:
        """The endpoints an event goes to."""
        return [e for e in self.current() if e.wants(event_type, data)]


def outbox_of(client: redis.Redis, endpoints: Endpoints, namespace: str = "af") -> Outbox | None:
    """The outbox events are published to, asking `endpoints` which types are wanted; None without an
    endpoints file: then nothing is ever published."""
    return Outbox(client, endpoints.subscribed, namespace) if endpoints.path is not None else None
