"""API keys: a YAML file of {name, sha256, role} entries; keys themselves are never stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

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
