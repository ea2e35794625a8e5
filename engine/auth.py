"""API keys: a YAML file of {name, sha256, role} entries; keys themselves are never stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

Role = Literal["scorer", "admin"]
ROLES: tuple[Role, ...] = ("scorer", "admin")


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    role: Role


class KeyFileError(ValueError):
    """The API keys file is malformed; the message names the entry."""


def load_keys(path: Path) -> list[ApiKey]:
    """Read the keys file (a missing file means no keys: every call is refused)."""
    if not path.exists():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    keys = []
    for i, e in enumerate(entries, start=1):
        if not isinstance(e, dict) or {"name", "sha256", "role"} - set(e):
            raise KeyFileError(f"{path}: entry {i} needs name, sha256 and role")
        if e["role"] not in ROLES:
            raise KeyFileError(f"{path}: entry {i} ({e['name']}): role must be one of {ROLES}")
        keys.append(ApiKey(str(e["name"]), str(e["sha256"]).lower(), e["role"]))
    return keys


def new_key(path: Path, name: str, role: Role) -> str:
    """Create a key, store only its SHA-256 in the file, and return the key (shown once)."""
    if role not in ROLES:
        raise KeyFileError(f"role must be one of {ROLES}")
    keys = load_keys(path)
    if any(k.name == name for k in keys):
        raise KeyFileError(f"{path}: a key named {name!r} exists already")
    key = "afk_" + secrets.token_urlsafe(32)
    entries = [k.__dict__ for k in keys] + [{"name": name, "sha256": _digest(key), "role": role}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    path.chmod(0o600)
    return key


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


class ApiKeyAuth:
    """ASGI middleware: refuses a call without a valid key, or with the wrong role, before anything
    reads its body, so an unauthenticated caller learns nothing about what the service would accept.

    `roles` maps path prefixes to the role they need; paths under no prefix are open (probes,
    metrics, the docs). With `keys=None` authentication is off (local development only).
    """

    def __init__(self, app: ASGIApp, keys: list[ApiKey] | None, roles: dict[str, Role]) -> None:
        self.app, self.keys, self.roles = app, keys, roles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        required = self._required(scope)
        if required is None or self.keys is None:
            await self.app(scope, receive, send)
            return
        presented = _bearer(scope)
        key = authenticate(self.keys, presented) if presented else None
        if key is None:
            response = JSONResponse(
                {"detail": "missing or unknown API key: send Authorization: Bearer <key>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        elif required == "admin" and key.role != "admin":
            response = JSONResponse(
                {"detail": f"key {key.name!r} has role {key.role!r}; this call needs admin"}, status_code=403
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _required(self, scope: Scope) -> Role | None:
        if scope["type"] != "http":
            return None
        path: str = scope["path"]
        return next((role for prefix, role in self.roles.items() if path.startswith(prefix)), None)


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, presented = value.decode("latin-1").partition(" ")
            return presented.strip() if scheme.lower() == "bearer" else ""
    return ""
