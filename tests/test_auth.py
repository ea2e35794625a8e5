"""API keys a provider can operate: the key file and its commands, live reload, roles, merchant scopes.

Against the real service: FastAPI's test client with the app's lifespan (the key watcher runs in
it) on a real redis-server, and `antifraud serve --workers 2` as a subprocess for the reload that
every worker must notice.
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from payloads import score_request
from typer.testing import CliRunner

from antifraud.engine.api import create_app
from antifraud.engine.auth import ApiKey, KeyFileError, authenticate, load_keys, new_key, revoke_key
from antifraud.engine.cli import app as cli
from antifraud.engine.settings import ROOT, Settings
from antifraud.engine.stack import ServiceStack

PAN_SECRET = "test-secret-0123456789"
RELOAD_DEADLINE_S = 3.0  # the contract is ~1 s (0.5 s polls, one poll of holding still); slack for CI


# -- the key file


def test_new_key_stores_only_a_hash_with_its_scope_atomically_and_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = new_key(path, "checkout-eu", "scorer", ["m_1", "m_2"])
    assert key.startswith("afk_") and key not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (entry,) = load_keys(path)
    assert entry.merchants == frozenset({"m_1", "m_2"}) and entry.role == "scorer"
    assert entry.created is not None and entry.created.endswith("Z")
    assert authenticate(load_keys(path), key) == entry
    assert authenticate(load_keys(path), key + "x") is None
    inode = path.stat().st_ino
    new_key(path, "analysts", "analyst")
    assert path.stat().st_ino != inode, "rewritten by rename, never in place"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"], "no temporary file left behind"
    assert revoke_key(path, "checkout-eu").name == "checkout-eu"
    assert [k.name for k in load_keys(path)] == ["analysts"]
    with pytest.raises(KeyFileError, match="no key named 'nobody'"):
        revoke_key(path, "nobody")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("- {name: a, sha256: '%s', role: scorer, merchant: [m_1]}", "unknown field"),
        ("- {name: a, sha256: '%s', role: admin, merchants: [m_1]}", "admin key cannot be scoped"),
        ("- {name: a, sha256: '%s', role: scorer, merchants: []}", "non-empty list"),
        ("- {name: a, sha256: '%s', role: owner}", "role must be one of"),
        ("- {name: a, sha256: 'abc', role: scorer}", "64 hexadecimal"),
        ("- {name: a, sha256: '%s', role: scorer}\n- {name: a, sha256: '%s', role: analyst}", "twice"),
        ("- {name: a, role: scorer}", "needs name, sha256 and role"),
        ("{name: a}", "must be a list"),
        ("- [unclosed", "not valid YAML"),
    ],
)
def test_a_malformed_key_file_is_refused_naming_the_entry(tmp_path: Path, text: str, error: str) -> None:
    """Strict on purpose: a misspelt `merchant:` silently ignored would leave a key unscoped."""
    path = tmp_path / "keys.yaml"
    path.write_text(text.replace("%s", "0" * 64))
    with pytest.raises(KeyFileError, match=error):
        load_keys(path)


def test_keys_commands_new_list_revoke(tmp_path: Path) -> None:
    path, runner = tmp_path / "keys.yaml", CliRunner()
    made = runner.invoke(
        cli,
        [
            "keys",
            "new",
            "--name",
            "eu",
            "--role",
            "scorer",
            "--file",
            str(path),
            "--merchant",
            "m_2",
            "--merchant",
            "m_1",
        ],
    )
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("afk_")
    assert (
        runner.invoke(
            cli, ["keys", "new", "--name", "risk", "--role", "analyst", "--file", str(path)]
        ).exit_code
        == 0
    )
    listed = runner.invoke(cli, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "MERCHANTS", "CREATED", "SHA256"]
    assert lines[1].split()[:3] == ["eu", "scorer", "m_1,m_2"] and lines[2].split()[:3] == [
        "risk",
        "analyst",
        "*",
    ]
    digests = [k.sha256 for k in load_keys(path)]
    assert key not in listed.output and not any(d in listed.output for d in digests), (
        "never a key or a whole hash"
    )
    assert all(d[:8] in listed.output for d in digests)

    refused = [
        ["keys", "new", "--name", "boss", "--role", "owner", "--file", str(path)],
        ["keys", "new", "--name", "ops", "--role", "admin", "--file", str(path), "--merchant", "m_1"],
        ["keys", "new", "--name", "eu", "--role", "scorer", "--file", str(path)],  # the name is taken
        ["keys", "revoke", "--name", "nobody", "--file", str(path)],
        ["keys", "list", "--file", str(tmp_path / "missing.yaml")],
    ]
    for args in refused:
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
    revoked = runner.invoke(cli, ["keys", "revoke", "--name", "eu", "--file", str(path)])
    assert revoked.exit_code == 0, revoked.output
    assert [k.name for k in load_keys(path)] == ["risk"]


# -- the running service (test client with its lifespan)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.yaml"


@pytest.fixture
def service(
    keys_file: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The service with one key of each kind: scorer, analyst, admin, and a scorer scoped to m_1."""
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", PAN_SECRET)
    keys = {
        "scorer": new_key(keys_file, "checkout", "scorer"),
        "analyst": new_key(keys_file, "risk-team", "analyst"),
        "admin": new_key(keys_file, "ops", "admin"),
        "m1": new_key(keys_file, "shop-m1", "scorer", ["m_1"]),
        "m1_analyst": new_key(keys_file, "shop-m1-risk", "analyst", ["m_1"]),
    }
    settings = Settings(
        redis_url=None,
        model_dir=ROOT / "models" / "default",
        rules_dir=ROOT / "rules",
        api_keys_file=keys_file,
    )
    with TestClient(create_app(settings, client=redis_client)) as client:
        yield client, keys


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _until(check: Callable[[], bool], deadline_s: float = RELOAD_DEADLINE_S) -> float:
    """Seconds until `check()` held, polling every 50 ms; fails past the deadline."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < deadline_s, f"not within {deadline_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


def _label(txid: str) -> dict[str, str]:
    return {"transaction_id": txid, "kind": "label", "label": "fraud", "reported_at": "2026-03-05T00:00:00Z"}


def test_a_new_key_works_and_a_revoked_one_is_refused_without_a_restart(service, keys_file: Path) -> None:  # type: ignore[no-untyped-def]
    client, keys = service

    def status(key: str) -> int:
        return int(client.get("/v1/decisions/tx-none", headers=_auth(key)).status_code)

    late = new_key(keys_file, "late-comer", "analyst")
    took = _until(lambda: status(late) == 404)  # known, allowed, and no such decision
    revoke_key(keys_file, "checkout")
    took = max(took, _until(lambda: status(keys["scorer"]) == 401))
    assert took < RELOAD_DEADLINE_S
    assert status(keys["admin"]) == 404, "the other keys stay"


def test_a_malformed_key_file_keeps_the_previous_keys(
    service, keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    client, keys = service
    good = keys_file.read_text()
    with caplog.at_level(logging.ERROR, logger="antifraud.auth"):
        keys_file.write_text(good + "- {name: broken, role: scorer}\n")
        _until(lambda: "previous keys stay" in caplog.text)
    assert "entry 6 needs name, sha256 and role" in caplog.text
    for key in keys.values():
        assert client.get("/v1/decisions/tx-none", headers=_auth(key)).status_code == 404
    # fixed again: the next load takes it (the one key left is refused no more, the others are)
    keys_file.write_text(good.split("- name: risk-team")[0])
    _until(lambda: client.get("/v1/decisions/tx-none", headers=_auth(keys["analyst"])).status_code == 401)
    assert client.get("/v1/decisions/tx-none", headers=_auth(keys["scorer"])).status_code == 404


def test_roles(service) -> None:  # type: ignore[no-untyped-def]
    """scorer: score, feedback, read; analyst: feedback and read, never score; admin: everything."""
    client, keys = service
    for n, who in enumerate(("scorer", "admin")):
        assert (
            client.post(
                "/v1/score", json=score_request(f"tx-{who}", minute=n), headers=_auth(keys[who])
            ).status_code
            == 200
        )
    refused = client.post(
        "/v1/score", json=score_request("tx-analyst", minute=5), headers=_auth(keys["analyst"])
    )
    assert refused.status_code == 403
    assert refused.json()["detail"] == "key 'risk-team' has role 'analyst'; this call needs admin or scorer"
    for who in ("scorer", "analyst", "admin"):
        assert client.get("/v1/decisions/tx-scorer", headers=_auth(keys[who])).status_code == 200
        fed = client.post("/v1/feedback", json=_label("tx-admin"), headers=_auth(keys[who]))
        assert (fed.status_code, fed.json()["matched"]) == (202, True)
    for who in ("scorer", "analyst"):
        assert client.post("/admin/reload-rules", headers=_auth(keys[who])).status_code == 403
    assert client.post("/admin/reload-rules", headers=_auth(keys["admin"])).status_code == 200
    # the analyst's refused payment was never scored
    assert client.get("/v1/decisions/tx-analyst", headers=_auth(keys["admin"])).status_code == 404


def test_a_key_scoped_to_a_merchant_scores_reads_and_labels_only_its_payments(  # type: ignore[no-untyped-def]
    service, redis_client: redis.Redis
) -> None:
    client, keys = service
    own = client.post("/v1/score", json=score_request("tx-own"), headers=_auth(keys["m1"]))
    assert own.status_code == 200
    other = score_request("tx-other", minute=1, merchant_id="m_2")
    assert client.post("/v1/score", json=other, headers=_auth(keys["scorer"])).status_code == 200

    # scoring another merchant's payment: 403 naming key and merchant, before anything is counted
    before = redis_client.dbsize()
    refused = client.post(
        "/v1/score", json=score_request("tx-new", minute=2, merchant_id="m_2"), headers=_auth(keys["m1"])
    )
    assert refused.status_code == 403
    assert refused.json()["detail"] == "key 'shop-m1' may not act for merchant 'm_2'"
    assert redis_client.dbsize() == before, "no counter, decision or log entry moved"

    # reading: its own merchant's decision, never another's (the same 404 as an unknown id)
    for who in ("m1", "m1_analyst"):
        assert client.get("/v1/decisions/tx-own", headers=_auth(keys[who])).status_code == 200
        hidden = client.get("/v1/decisions/tx-other", headers=_auth(keys[who]))
        unknown = client.get("/v1/decisions/tx-unknown", headers=_auth(keys[who]))
        assert hidden.status_code == unknown.status_code == 404
        assert hidden.json()["detail"].replace("tx-other", "ID") == unknown.json()["detail"].replace(
            "tx-unknown", "ID"
        )
    assert client.get("/v1/decisions/tx-other", headers=_auth(keys["scorer"])).status_code == 200

    # feedback: about its own payments only; another's or an unknown one is refused and not stored
    fed = client.post("/v1/feedback", json=_label("tx-own"), headers=_auth(keys["m1_analyst"]))
    assert (fed.status_code, fed.json()["matched"]) == (202, True)
    before = redis_client.dbsize(), redis_client.xlen("af:feedback")
    for txid in ("tx-other", "tx-unknown"):
        refused = client.post("/v1/feedback", json=_label(txid), headers=_auth(keys["m1"]))
        assert refused.status_code == 403
        assert "shop-m1" in refused.json()["detail"]
    assert (redis_client.dbsize(), redis_client.xlen("af:feedback")) == before, "nothing stored"
    assert client.get("/v1/decisions/tx-other", headers=_auth(keys["admin"])).json()["feedback"] == []
    # an unscoped key keeps feedback about an unknown payment, unmatched (a late chargeback)
    late = client.post("/v1/feedback", json=_label("tx-unknown"), headers=_auth(keys["scorer"]))
    assert (late.status_code, late.json()["matched"]) == (202, False)


def test_the_key_scope_is_one_requests_own(service) -> None:  # type: ignore[no-untyped-def]
    """The matched key travels in the request's scope: a scoped call leaves nothing for the next."""
    client, keys = service
    assert (
        client.post(
            "/v1/score", json=score_request("tx-a", merchant_id="m_2"), headers=_auth(keys["m1"])
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/v1/score", json=score_request("tx-a", merchant_id="m_2"), headers=_auth(keys["scorer"])
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/v1/score", json=score_request("tx-b", minute=1, merchant_id="m_2"), headers=_auth(keys["m1"])
        ).status_code
        == 403
    )


# -- every worker of `antifraud serve --workers 2`


def test_every_worker_reloads_the_key_file() -> None:
    """New connections land on either worker (SO_REUSEPORT): all of them must take the change."""
    with ServiceStack(workers=2, keys={"ops": "admin"}, env={"ANTIFRAUD_PAN_SECRET": PAN_SECRET}) as stack:
        url = f"http://127.0.0.1:{stack.port}/v1/decisions/tx-none"

        def all_answer(key: str, status: int, calls: int = 12) -> bool:
            # a fresh connection per call, so the kernel spreads them over both workers
            return all(httpx.get(url, headers=_auth(key)).status_code == status for _ in range(calls))

        late = new_key(stack.keys_file, "late-comer", "scorer")
        added = _until(lambda: all_answer(late, 404))
        revoke_key(stack.keys_file, "late-comer")
        revoked = _until(lambda: all_answer(late, 401))
        assert all_answer(stack.keys["ops"], 404)
        print(f"new key accepted by every worker after {added:.2f} s, revoked after {revoked:.2f} s")


def test_api_key_is_frozen() -> None:
    key = ApiKey("a", "0" * 64, "scorer", frozenset({"m_1"}))
    assert key.may_act_for("m_1") and not key.may_act_for("m_2")
    assert ApiKey("b", "0" * 64, "analyst").may_act_for("anything")
