"""API keys: a YAML file of {name, sha256, role, merchants?, created?} entries; keys are never stored.

The file is what an operator edits (`antifraud keys new | list | revoke`); every change rewrites it
atomically (a temporary file beside it, then `os.replace`), and each worker reloads it live
(`KeyRing.watch`), so a new key works and a revoked one is refused within about a second, without a
restart.

Roles: `scorer` scores payments, sends feedback and reads decisions; `analyst` reads decisions and
sends feedback but cannot score; `admin` may do everything, /admin/ included. A key may be scoped to
merchant ids (`merchants`): it then scores, reads and sends feedback only for those merchants' payments.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

import yaml
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from antifraud.engine.files import atomic_write

log = logging.getLogger("antifraud.auth")

Role = Literal["scorer", "analyst", "admin"]
ROLES: tuple[Role, ...] = ("scorer", "analyst", "admin")

#: Which roles may call which paths: the first matching prefix wins, so the narrower ones come first.
#: Paths under no prefix are open (probes, metrics, the docs).
ROUTE_ROLES: dict[str, frozenset[Role]] = {
    "/admin/": frozenset({"admin"}),
    "/v1/score": frozenset({"scorer", "admin"}),
    "/v1/": frozenset({"scorer", "analyst", "admin"}),
}

#: The ASGI scope entry where the middleware leaves the caller's `ApiKey` for the routes: a plain
#: scope key is the cheapest thing a route can read (no `request.state` wrapper), and a scope is
#: one request's own, so nothing leaks between requests.
SCOPE_KEY = "antifraud.api_key"

_FIELDS = frozenset({"name", "sha256", "role", "merchants", "created"})


@dataclass(frozen=True)
class ApiKey:
    """One entry of the keys file. `merchants` None means every merchant."""

    name: str
    sha256: str
    role: Role
    merchants: frozenset[str] | None = None
    created: str | None = None

    def may_act_for(self, merchant_id: str) -> bool:
        """Whether this key may score, read or send feedback about a payment of `merchant_id`."""
        return self.merchants is None or merchant_id in self.merchants

    def to_entry(self) -> dict[str, object]:
        """The key as a YAML entry of the keys file (optional fields only when set)."""
        entry: dict[str, object] = {"name": self.name, "sha256": self.sha256, "role": self.role}
        if self.merchants is not None:
            entry["merchants"] = sorted(self.merchants)
        if self.created is not None:
            entry["created"] = self.created
        return entry


class KeyFileError(ValueError):
    """The API keys file is malformed, or a change to it is refused; the message names the entry."""


def load_keys(path: Path) -> list[ApiKey]:
    """Read the keys file strictly (a missing file means no keys: every call is refused).

    An unknown field is an error rather than ignored: a misspelt `merchant:` would otherwise
    silently leave a key unscoped.
    """
    if not path.exists():
        return []
    try:
        entries = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as exc:
        raise KeyFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(entries, list):
        raise KeyFileError(f"{path}: must be a list of keys")
    keys: list[ApiKey] = []
    for i, e in enumerate(entries, start=1):
        if not isinstance(e, dict) or {"name", "sha256", "role"} - set(e):
            raise KeyFileError(f"{path}: entry {i} needs name, sha256 and role")
        where = f"{path}: entry {i} ({e['name']})"
        if unknown := set(e) - _FIELDS:
            raise KeyFileError(
                f"{where}: unknown field(s) {sorted(map(str, unknown))}; known: {sorted(_FIELDS)}"
            )
        if e["role"] not in ROLES:
            raise KeyFileError(f"{where}: role must be one of {ROLES}")
        digest = str(e["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise KeyFileError(f"{where}: sha256 must be 64 hexadecimal digits")
        merchants = _merchants(e.get("merchants"), where) if "merchants" in e else None
        if merchants is not None and e["role"] == "admin":
            raise KeyFileError(f"{where}: an admin key cannot be scoped to merchants")
        created = str(e["created"]) if e.get("created") is not None else None
        key = ApiKey(str(e["name"]), digest, cast(Role, e["role"]), merchants, created)
        if any(k.name == key.name for k in keys):
            raise KeyFileError(f"{where}: a key named {key.name!r} appears twice")
        keys.append(key)
    return keys


def _merchants(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise KeyFileError(
            f"{where}: merchants must be a non-empty list of merchant ids (omit it for every merchant)"
        )
    ids = frozenset(str(m).strip() for m in value)
    if any(not m or len(m) > 128 for m in ids):
        raise KeyFileError(f"{where}: a merchant id must be 1-128 characters")
    return ids


def new_key(path: Path, name: str, role: Role, merchants: Iterable[str] = ()) -> str:
    """Create a key, store only its SHA-256 in the file, and return the key (shown once).

    `merchants` scopes the key to those merchant ids; empty means every merchant.
    """
    if role not in ROLES:
        raise KeyFileError(f"role must be one of {ROLES}")
    scope = frozenset(m.strip() for m in merchants)
    if scope and role == "admin":
        raise KeyFileError("an admin key cannot be scoped to merchants: /admin/ calls act for every merchant")
    if any(not m or len(m) > 128 for m in scope):
        raise KeyFileError("a merchant id must be 1-128 characters")
    if not name.strip():
        raise KeyFileError("a key needs a name")
    keys = load_keys(path)
    if any(k.name == name for k in keys):
        raise KeyFileError(f"{path}: a key named {name!r} exists already")
    key = "afk_" + secrets.token_urlsafe(32)
    created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    write_keys(path, [*keys, ApiKey(name, _digest(key), role, scope or None, created)])
    return key


def revoke_key(path: Path, name: str) -> ApiKey:
    """Remove the key named `name` from the file and return its entry; running workers refuse it
    once they have reloaded the file (about a second)."""
    keys = load_keys(path)
    found = next((k for k in keys if k.name == name), None)
    if found is None:
        known = ", ".join(k.name for k in keys) or "none"
        raise KeyFileError(f"{path}: no key named {name!r} (keys: {known})")
    write_keys(path, [k for k in keys if k.name != name])
    return found


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Rewrite the keys file atomically, readable by its owner only (`engine.files.atomic_write`):
    a worker reloading it reads either the old file or the new one, and the hashes are never readable
    by others, not even for a moment."""
    atomic_write(path, yaml.safe_dump([k.to_entry() for k in keys], sort_keys=False), mode=0o600)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def authenticate(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The key entry matching a presented key, compared in constant time against every entry."""
    digest = _digest(presented)
    found = None
    for k in keys:
        if hmac.compare_digest(k.sha256, digest):
            found = k
    return found


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    # the inode too: `os.replace` by a writer in the same second, same size, is still a change
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyRing:
    """A worker's current keys, reloaded when the keys file changes.

    `keys` is replaced as a whole, never edited, so a request reads one consistent list. A file
    that fails to load keeps the previous keys (the error is logged); a missing file means no keys,
    as at start, so deleting the file refuses every caller (fail closed).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = _fingerprint(path)
        self.keys: list[ApiKey] = load_keys(path)  # a malformed file at start stops the start

    def reload(self) -> bool:
        """Load the file now; on an error keep the current keys and return False."""
        self._seen = _fingerprint(self.path)
        try:
            keys = load_keys(self.path)
        except (KeyFileError, OSError, UnicodeDecodeError) as exc:
            log.error("API keys file refused, the previous keys stay: %s", exc)
            return False
        if not keys:
            log.warning("API keys file %s has no keys (or is missing): every call is refused", self.path)
        self.keys = keys
        log.info("API keys reloaded: %d key(s)", len(keys))
        return True

    async def watch(self, every_s: float = 0.5) -> None:
        """Poll the file's mtime, size and inode; reload once a change has held still for one poll.

        The same rule as the rules and models (engine/loader.py): a file rewritten in place can be
        caught half-written. One `stat` per poll is all it costs.
        """
        changing: tuple[int, int, int] | Literal[False] | None = False
        while True:
            await asyncio.sleep(every_s)
            now = _fingerprint(self.path)
            if now == self._seen:
                changing = False
            elif changing == now:
                changing = False
                self.reload()
            else:
                changing = now


class ApiKeyAuth:
    """ASGI middleware: refuses a call without a valid key, or with a role that may not make it,
    before anything reads its body, so an unauthenticated caller learns nothing about what the
    service would accept. The matched key is left in `scope[SCOPE_KEY]` for the routes' merchant
    checks (`antifraud.engine.api.deps`).

    `roles` maps path prefixes to the roles that may call them (first match wins, `ROUTE_ROLES`);
    paths under no prefix are open. With `keys=None` authentication is off (local development only).
    While the app's lifespan runs, the middleware keeps the key ring reloaded (`KeyRing.watch`).
    """

    def __init__(
        self, app: ASGIApp, keys: KeyRing | None, roles: Mapping[str, frozenset[Role]] = ROUTE_ROLES
    ) -> None:
        self.app, self.ring, self.roles = app, keys, dict(roles)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.ring is not None:
            await self._with_watcher(self.ring, scope, receive, send)
            return
        allowed = self._allowed(scope)
        if allowed is None or self.ring is None:
            await self.app(scope, receive, send)
            return
        presented = _bearer(scope)
        key = authenticate(self.ring.keys, presented) if presented else None
        if key is None:
            response = JSONResponse(
                {"detail": "missing or unknown API key: send Authorization: Bearer <key>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif key.role not in allowed:
            needs = " or ".join(sorted(allowed))
            response = JSONResponse(
                {"detail": f"key {key.name!r} has role {key.role!r}; this call needs {needs}"},
                status_code=403,
            )
        else:
            scope[SCOPE_KEY] = key
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _with_watcher(self, ring: KeyRing, scope: Scope, receive: Receive, send: Send) -> None:
        # The lifespan call lasts as long as the app serves: the watcher lives exactly that long.
        watcher = asyncio.create_task(ring.watch())
        try:
            await self.app(scope, receive, send)
        finally:
            watcher.cancel()

    def _allowed(self, scope: Scope) -> frozenset[Role] | None:
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        return next((roles for prefix, roles in self.roles.items() if path.startswith(prefix)), None)


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, presented = value.decode("latin-1").partition(" ")
            return presented.strip() if scheme.lower() == "bearer" else ""
    return ""
