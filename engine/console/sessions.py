"""Console sessions in Redis: made at sign-in with an analyst or admin key, ended by sign-out or expiry.

A session is the hash `{ns}:console:session:<sha256(token)>` (key_name, key_sha, csrf, created, renewed,
ip, ua). Only the token's hash is a key, so a Redis dump holds no usable cookie. The hash expires
`idle_s` after the last request (renewed at most once a minute, so a request costs one HGETALL), and a
session is refused `max_s` after sign-in whatever its use. The key's role and merchants are taken from
the key ring at every request: a revoked key or a changed role counts within the ring's reload (about a
second).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

import redis

from antifraud.engine.auth import ApiKey, Role

#: how often the idle expiry is pushed back, at most (seconds)
RENEW_EVERY_S: Final = 60
#: sign-in attempts an IP may make per minute, unless ANTIFRAUD_CONSOLE_SIGNIN_PER_MINUTE says otherwise
SIGNIN_ATTEMPTS_PER_MINUTE: Final = 10


@dataclass(frozen=True)
class Session:
    """A signed-in console user: the key's name, its role and merchants (None: every merchant) as the key
    ring has them now, the session's CSRF token, and where the request came from."""

    key_name: str
    role: Role
    merchants: frozenset[str] | None
    csrf: str
    ip: str = ""
    token_hash: str = ""

    @property
    def unscoped(self) -> bool:
        """Whether the key acts for every merchant."""
        return self.merchants is None


def token_hash(token: str) -> str:
    """The Redis name of a session token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """Whether a client address is this machine's (127.0.0.0/8 or ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SessionStore:
    """Creates, reads and ends console sessions, and counts sign-in attempts per IP."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "af",
        idle_s: int = 1800,
        max_s: int = 43_200,
        signin_per_minute: int = SIGNIN_ATTEMPTS_PER_MINUTE,
    ) -> None:
        self.client = client
        self.idle_s, self.max_s = idle_s, max_s
        self.signin_per_minute = signin_per_minute
        self._prefix = f"{namespace}:console:session:"
        self._attempts = f"{namespace}:console:signin:"

    def _key(self, hashed: str) -> str:
        return self._prefix + hashed

    def create(self, key: ApiKey, ip: str, user_agent: str) -> tuple[str, Session]:
        """A new session for `key`; returns the cookie's token (shown to nobody else) and the session."""
        token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), int(time.time())
        hashed = token_hash(token)
        fields = {
            "key_name": key.name,
            "key_sha": key.sha256,
            "csrf": csrf,
            "created": now,
            "renewed": now,
            "ip": ip,
            "ua": user_agent[:256],
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(hashed), mapping=fields)
            pipe.expire(self._key(hashed), self.idle_s)
            pipe.execute()
        return token, Session(key.name, key.role, key.merchants, csrf, ip, hashed)

    def load(self, token: str, keys: Sequence[ApiKey], ip: str) -> Session | None:
        """The live session of a cookie's token, or None: unknown, idle too long, past its maximum age, or
        its key revoked (the session is then deleted). The role and merchants are the key's now."""
        hashed = token_hash(token)
        name = self._key(hashed)
        raw = cast(dict[bytes, bytes], self.client.hgetall(name))
        if not raw:
            return None
        now = int(time.time())
        created = int(raw.get(b"created", b"0"))
        key = next((k for k in keys if k.sha256 == raw.get(b"key_sha", b"").decode()), None)
        if key is None or key.role == "scorer" or now - created >= self.max_s:
            self.client.delete(name)
            return None
        if now - int(raw.get(b"renewed", b"0")) >= RENEW_EVERY_S:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping={"renewed": now})
                pipe.expire(name, min(self.idle_s, self.max_s - (now - created)))
                pipe.execute()
        return Session(key.name, key.role, key.merchants, raw[b"csrf"].decode(), ip, hashed)

    def end(self, session: Session) -> None:
        """Delete the session: its cookie no longer signs anyone in."""
        self.client.delete(self._key(session.token_hash))

    def attempt(self, ip: str) -> bool:
        """Count a sign-in attempt from `ip`; False once it made `signin_per_minute` within the minute
        that began with its first."""
        name = self._attempts + ip
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(name, 0, ex=60, nx=True)
            pipe.incr(name)
            count = cast(int, pipe.execute()[1])
        return count <= self.signin_per_minute
