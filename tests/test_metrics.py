"""/metrics as an operator reads it: requests by route template and status, the score histogram,
and the live model and rule versions, against the real app (lifespan, real redis-server, real
LightGBM), in one process and merged across worker processes (PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from fastapi.testclient import TestClient
from payloads import score_request
from prometheus_client.parser import text_string_to_metric_families

from antifraud.engine.api import create_app
from antifraud.engine.auth import new_key
from antifraud.engine.metrics import Metrics
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT, Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Service = tuple[TestClient, dict[str, str]]

SECRET = "test-secret-0123456789"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A copy of the default rule set, to edit."""
    return Path(shutil.copytree(ROOT / "rules", tmp_path / "rules"))


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A key file with a scorer and an admin key."""
    path = tmp_path / "keys.yaml"
    return path, {"scorer": new_key(path, "checkout", "scorer"), "admin": new_key(path, "ops", "admin")}


@pytest.fixture
def service(
    model_dir: Path,
    rules_dir: Path,
    keys: tuple[Path, dict[str, str]],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Service]:
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", SECRET)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings = Settings(redis_url=None, model_dir=model_dir, rules_dir=rules_dir, api_keys_file=keys[0])
    with TestClient(create_app(settings, client=redis_client)) as client:
        yield client, keys[1]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return _samples(response.text)


def _requests(samples: Samples, route: str, method: str, status: int) -> float:
    labels = frozenset({"route": route, "method": method, "status": str(status)}.items())
    return samples.get(("antifraud_http_requests_total", labels), 0.0)


def _versions(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def _edit_rules(rules_dir: Path) -> str:
    """Change the rule set (so its version changes); the new text."""
    path = rules_dir / "default.yaml"
    text = path.read_text()
    assert "sanctioned_countries: [KP, IR, SY, CU]" in text
    edited = text.replace("sanctioned_countries: [KP, IR, SY, CU]", "sanctioned_countries: [KP, IR, SY]")
    path.write_text(edited)
    return edited


def test_requests_are_counted_by_route_template_method_and_status(service: Service) -> None:
    client, keys = service
    scorer = _auth(keys["scorer"])
    before = _scrape(client)
    assert client.post("/v1/score", json=score_request("tx-m1"), headers=scorer).status_code == 200
    assert client.post("/v1/score", json=score_request("tx-m2", 1), headers=scorer).status_code == 200
    assert client.post("/v1/score", json=score_request("tx-m3")).status_code == 401  # no key
    assert client.post("/v1/score", json=score_request(amount=-1), headers=scorer).status_code == 422
    assert client.post("/v1/score", content=b"{" + b" " * 20_000 + b"}", headers=scorer).status_code == 413
    # reading: a known id, an unknown one (404 of the route), and without a key (401, before routing)
    assert client.get("/v1/decisions/tx-m1", headers=scorer).status_code == 200
    assert client.get("/v1/decisions/tx-unknown", headers=scorer).status_code == 404
    assert client.get("/v1/decisions/tx-m1").status_code == 401
    assert client.post("/admin/reload-rules", headers=scorer).status_code == 403
    assert client.get("/no/such/path/tx-m1").status_code == 404
    assert client.get("/v1/no-such-route/tx-m1").status_code == 401  # the auth answers first
    assert client.request("BREW", "/health").status_code == 405
    after = _scrape(client)

    def delta(route: str, method: str, status: int) -> float:
        return _requests(after, route, method, status) - _requests(before, route, method, status)

    assert delta("/v1/score", "POST", 200) == 2
    assert delta("/v1/score", "POST", 401) == 1
    assert delta("/v1/score", "POST", 422) == 1
    assert delta("/v1/score", "POST", 413) == 1
    assert delta("/v1/decisions/{transaction_id}", "GET", 200) == 1
    assert delta("/v1/decisions/{transaction_id}", "GET", 404) == 1
    assert delta("/v1/decisions/{transaction_id}", "GET", 401) == 1
    assert delta("/admin/reload-rules", "POST", 403) == 1
    assert delta("other", "GET", 404) == 1
    assert delta("other", "GET", 401) == 1
    assert delta("/health", "other", 405) == 1  # an unknown method is no new label value
    # the scrape before this one is counted too
    assert _requests(after, "/metrics", "GET", 200) >= 1
    # never a raw path: ids would make one series per payment
    routes = {dict(labels)["route"] for (name, labels) in after if name == "antifraud_http_requests_total"}
    assert not any("tx-" in route for route in routes), routes


def test_an_unhandled_error_is_counted_as_500(
    model_dir: Path, rules_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTIFRAUD_PAN_SECRET", SECRET)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    settings = Settings(redis_url=None, model_dir=model_dir, rules_dir=rules_dir, api_keys_file=None)
    app = create_app(settings, client=redis_client)

    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken/{item}", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/broken/1").status_code == 500
        assert _requests(_scrape(client), "/broken/{item}", "GET", 500) == 1


def test_scored_decisions_fill_the_score_histograms(service: Service) -> None:
    client, keys = service
    before = _scrape(client)
    scores = [
        client.post("/v1/score", json=score_request(f"tx-h{i}", i), headers=_auth(keys["scorer"])).json()[
            "score"
        ]
        for i in range(3)
    ]
    # a retry answers the stored decision: one payment, one observation
    client.post("/v1/score", json=score_request("tx-h0", 0), headers=_auth(keys["scorer"]))
    after = _scrape(client)
    none = frozenset[tuple[str, str]]()
    for name in ("antifraud_score", "antifraud_risk_score"):
        assert after[(f"{name}_count", none)] - before.get((f"{name}_count", none), 0) == 3
    assert after[("antifraud_score_sum", none)] - before.get(
        ("antifraud_score_sum", none), 0
    ) == pytest.approx(sum(scores))
    buckets = {dict(labels)["le"] for (name, labels) in after if name == "antifraud_score_bucket"}
    assert {"0.001", "0.01", "0.1", "0.5", "1.0", "+Inf"} <= buckets


def test_live_versions_are_published_and_follow_a_rules_reload(service: Service, rules_dir: Path) -> None:
    client, keys = service
    samples = _scrape(client)
    models = _versions(samples, "antifraud_model_info")
    assert len(models) == 1  # no shadow model configured: the live one only
    (labels, value), *_ = models.items()
    assert dict(labels)["role"] == "live" and dict(labels)["version"].startswith("test-model") and value == 1
    rules = _versions(samples, "antifraud_rules_info")
    (old,) = [dict(labels)["version"] for labels in rules]
    scored = client.post("/v1/score", json=score_request(), headers=_auth(keys["scorer"])).json()
    assert scored["rules_version"] == old

    _edit_rules(rules_dir)
    reloaded = client.post("/admin/reload-rules", headers=_auth(keys["admin"]))
    assert reloaded.status_code == 200, reloaded.text
    new = reloaded.json()["rules_version"]
    assert new != old
    rules = _versions(_scrape(client), "antifraud_rules_info")
    assert rules == {frozenset({"version": new}.items()): 1.0}  # the old version is gone

    # a refused rule set changes nothing
    (rules_dir / "default.yaml").write_text("rules: [")
    assert client.post("/admin/reload-rules", headers=_auth(keys["admin"])).status_code == 422
    assert _versions(_scrape(client), "antifraud_rules_info") == rules


def test_versions_in_one_process_replace_each_other() -> None:
    """Roles come and go (a shadow model added, then removed); each role shows one version."""
    metrics = Metrics()

    def loaded(model: str | None, shadow: str | None, rules: str) -> SimpleNamespace:
        version = lambda v: None if v is None else SimpleNamespace(version=v)  # noqa: E731
        return SimpleNamespace(model=version(model), shadow=version(shadow), rules=version(rules))

    def shown() -> set[tuple[str, ...]]:
        samples = _samples(metrics.render().decode())
        return {
            (*(f"{k}={v}" for k, v in sorted(labels)), name)
            for (name, labels), value in samples.items()
            if name.endswith("_info") and value == 1
        }

    metrics.note_loaded(loaded("m1", "s1", "r1"))
    assert shown() == {
        ("role=live", "version=m1", "antifraud_model_info"),
        ("role=shadow", "version=s1", "antifraud_model_info"),
        ("version=r1", "antifraud_rules_info"),
    }
    metrics.note_loaded(loaded("m2", None, "r1"))
    assert shown() == {
        ("role=live", "version=m2", "antifraud_model_info"),
        ("version=r1", "antifraud_rules_info"),
    }
    metrics.note_loaded(loaded(None, None, "r2"))  # no model loaded: no live model version
    assert shown() == {("version=r2", "antifraud_rules_info")}


# A worker: the real app in its own process with PROMETHEUS_MULTIPROC_DIR set (prometheus_client
# chooses file-backed values at import, so this cannot run in the test's process).
WORKER = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from antifraud.engine.api import create_app
from antifraud.engine.settings import Settings

args = json.loads(sys.argv[1])
settings = Settings(
    redis_url=args["redis_url"], model_dir=Path(args["model_dir"]), rules_dir=Path(args["rules_dir"]),
    api_keys_file=Path(args["keys_file"]),
)
with TestClient(create_app(settings)) as client:
    scorer = {"Authorization": "Bearer " + args["scorer"]}
    answer = client.post("/v1/score", json=args["body"], headers=scorer)
    assert answer.status_code == 200, answer.text
    assert client.post("/v1/score", json=args["body"]).status_code == 401
    version = answer.json()["rules_version"]
    if args["new_rules"]:
        Path(args["rules_dir"], "default.yaml").write_text(args["new_rules"])
        reloaded = client.post("/admin/reload-rules", headers={"Authorization": "Bearer " + args["admin"]})
        assert reloaded.status_code == 200, reloaded.text
        version = reloaded.json()["rules_version"]
    print(json.dumps({"rules_version": version}))
"""


def test_workers_metrics_merge_and_versions_follow_the_last_reload(
    model_dir: Path,
    rules_dir: Path,
    keys: tuple[Path, dict[str, str]],
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers share a metrics directory: counts add up, and a version one worker reloaded away
    from stops showing even though the other worker's file (it exited without being marked dead)
    still holds it at 1."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "ANTIFRAUD_PAN_SECRET": SECRET}
    new_rules = (rules_dir / "default.yaml").read_text().replace("[KP, IR, SY, CU]", "[KP, IR, SY]")

    def worker(txid: str, minute: float, reload_to: str | None) -> str:
        args = {
            "redis_url": redis_server.url,
            "model_dir": str(model_dir),
            "rules_dir": str(rules_dir),
            "keys_file": str(keys[0]),
            "scorer": keys[1]["scorer"],
            "admin": keys[1]["admin"],
            "body": score_request(txid, minute),
            "new_rules": reload_to,
        }
        done = subprocess.run(
            [sys.executable, "-c", WORKER, json.dumps(args)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        version: str = json.loads(done.stdout.strip().splitlines()[-1])["rules_version"]
        return version

    old = worker("tx-w1", 0, None)  # the first worker serves the original rules, then exits
    new = worker("tx-w2", 1, new_rules)  # the second starts on them and reloads the edited ones
    assert new != old
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    samples = _samples(Metrics().render().decode())

    assert _requests(samples, "/v1/score", "POST", 200) == 2
    assert _requests(samples, "/v1/score", "POST", 401) == 2
    none = frozenset[tuple[str, str]]()
    assert samples[("antifraud_score_count", none)] == 2
    assert _versions(samples, "antifraud_rules_info") == {frozenset({"version": new}.items()): 1.0}
    models = _versions(samples, "antifraud_model_info")
    assert [dict(labels)["role"] for labels in models] == ["live"] and set(models.values()) == {1.0}
