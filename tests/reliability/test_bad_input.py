"""Bad input: schemathesis against the service's own OpenAPI, in process (ASGI), on a real redis-server.

Every operation of the OpenAPI (score, feedback, decisions, health, ready, metrics, both admin
reloads) gets at least EXAMPLES generated requests with a valid admin key: schemathesis' positive
and negative cases (valid and invalid parameters and bodies), each with random extra query
parameters and headers, and, for operations without a body, a random body. Every answer is checked
by schemathesis (no 5xx; body matching the documented schema; status, content type and headers
documented; invalid data refused, valid data accepted). Then the operations that need a key get
generated requests without one, with an unknown key, and (admin) with a scorer key: 401 / 403.

Figures: requests and statuses per operation, and every kind of check failure with an example.
The seed is fixed (RELIABILITY_SEED, default below) so that a run can be reproduced.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core import NOT_SET
from schemathesis.core.failures import Failure, FailureGroup

from antifraud.engine.api import create_app
from antifraud.engine.auth import new_key
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT, Settings

from .helpers import FIGURES

EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "1000"))  # generated requests per operation, at least
UNAUTH_EXAMPLES = max(50, EXAMPLES // 4)
SEED = int(os.environ.get("RELIABILITY_SEED", "20260301"))
SECTION = "1. bad input"
COMMAND = ".venv/bin/pytest -q -s tests/reliability/test_bad_input.py"
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]
# How schemathesis names what each check found.
SERVER_ERRORS = {"ServerError"}
BODY_SCHEMA = {"JsonSchemaError", "MalformedJson", "MalformedMediaType", "MissingContentType"}
UNDOCUMENTED = {"UndefinedStatusCode", "UndefinedContentType", "MissingHeaders", "MissingHeaderNotRejected"}
REQUEST_SCHEMA = {"RejectedPositiveData", "AcceptedNegativeData"}

HEADER_NAMES = st.from_regex(r"X-[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True)
# no blanks: requests refuses header values that start with one
HEADER_VALUES = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=24)
QUERY = st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text(max_size=12), max_size=3)
NOISE = st.fixed_dictionaries(
    {
        "query": QUERY,
        "headers": st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=2),
        "body": st.one_of(st.none(), st.binary(max_size=64), st.just(b"{}"), st.just(b'{"a": [1, 2]}')),
    }
)


@dataclass
class Found:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    by_status: dict[int, str] = field(default_factory=dict)

    def record(self, failure: Failure, case: Any, status: int) -> None:
        kind = type(failure).__name__
        self.failures[kind] += 1
        if kind not in self.examples:
            body = case.body if case.body is not NOT_SET else None
            self.examples[kind] = (
                f"{status} for {case.method} {case.formatted_path} body={str(body)[:160]!r}: "
                f"{' '.join(failure.message.split())[:240]}"
            )


@dataclass
class Service:
    app: Any
    schema: Any
    scorer: str
    admin: str


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("bad-input")
    keys = tmp / "keys.yaml"
    scorer, admin = new_key(keys, "checkout", "scorer"), new_key(keys, "ops", "admin")
    rules = tmp / "rules"
    shutil.copytree(ROOT / "rules", rules)
    with pytest.MonkeyPatch.context() as mp, EmbeddedRedis(tmp / "redis") as server:
        mp.setenv("ANTIFRAUD_PAN_SECRET", os.urandom(16).hex())
        client = redis.Redis.from_url(server.url, socket_timeout=1.0)
        settings_ = Settings(
            redis_url=None,
            model_dir=ROOT / "models" / "default",
            rules_dir=rules,
            api_keys_file=keys,
            # JSON Schema cannot say "not ahead of the service's clock": with the default tolerance,
            # generated far-future timestamps are refused (tests/test_service_contract.py tests that)
            clock_skew_s=1e12,
        )
        app = create_app(settings_, client=client)
        # The document without its operations' security requirements: the tests choose which key
        # each request carries (an admin key here, none or a wrong one in `refusals`). With them,
        # schemathesis's negative cases may negate only the Authorization header, which the fuzzer
        # replaces by a valid key, and then report the accepted request as accepted negative data.
        document = copy.deepcopy(app.openapi())
        for operations in document["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
        schema = schemathesis.openapi.from_dict(document)
        schema.app, schema.location = app, "/openapi.json"
        yield Service(app, schema, scorer, admin)
        from schemathesis.python import asgi

        asgi.shutdown_lifespans()
        client.close()


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def _fuzz(
    operation: Any, headers_for: Any, examples: int, found: Found, checks: list[Any] | None, round_: int = 0
) -> None:
    strategies = [operation.as_strategy(generation_mode=GenerationMode.POSITIVE)]
    if _has_inputs(operation):
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    has_body = bool(operation.body)
    has_query = any(p.location == "query" for p in operation.iter_parameters())

    @seed(SEED + round_)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies), noise=NOISE)
    def run(case: Any, noise: dict[str, Any]) -> None:
        # the schema declares bearer auth, so schemathesis may generate Authorization headers of
        # its own: the test decides which key each request carries
        if case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}
        headers = {**noise["headers"], **headers_for(case)}
        kwargs: dict[str, Any] = {}
        if not has_body and noise["body"] is not None and case.method.upper() == "POST":
            kwargs["data"] = noise["body"]
        try:
            response = case.call(headers=headers, params=None if has_query else noise["query"], **kwargs)
        except Exception as exc:  # a crash of the app or of the transport: never expected
            found.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        found.requests += 1
        found.statuses[response.status_code] += 1
        if response.status_code not in found.by_status:
            body = case.body if case.body is not NOT_SET else kwargs.get("data")
            found.by_status[response.status_code] = (
                f"body={str(body)[:120]!r} headers={headers!r} -> {response.text[:160]!r}"
            )
        if checks is None:
            return
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                found.record(failure, case, response.status_code)
        except Failure as failure:
            found.record(failure, case, response.status_code)

    run()


@pytest.fixture(scope="module")
def fuzzed(service: Service) -> dict[str, Found]:
    """EXAMPLES generated requests per operation with an admin key (a few more calls if hypothesis
    stops early on an operation without parameters), checked by schemathesis."""
    results: dict[str, Found] = {}
    auth = {"Authorization": f"Bearer {service.admin}"}
    for operation in _operations(service.schema):
        found = Found()
        started = time.perf_counter()
        for round_ in range(5):  # bounded: hypothesis may end a small search space early
            _fuzz(operation, lambda case: auth, EXAMPLES - found.requests, found, CHECKS, round_)
            if found.requests >= EXAMPLES:
                break
        found.seconds = time.perf_counter() - started
        results[operation.label] = found
        FIGURES.add(
            SECTION,
            f"{operation.label}: requests / statuses / check failures",
            f"{found.requests:,} in {found.seconds:.0f} s / {dict(sorted(found.statuses.items()))} / "
            f"{dict(found.failures) or 'none'}",
            COMMAND,
        )
    return results


def _failures(fuzzed: dict[str, Found], kinds: set[str]) -> dict[str, dict[str, str]]:
    return {
        label: {k: found.examples[k] for k in found.failures if k in kinds}
        for label, found in fuzzed.items()
        if any(k in kinds for k in found.failures)
    }


def test_every_operation_gets_enough_requests(fuzzed: dict[str, Found]) -> None:
    assert len(fuzzed) == 8, sorted(fuzzed)
    short = {label: f.requests for label, f in fuzzed.items() if f.requests < EXAMPLES}
    assert not short, short
    errors = {label: f.errors[:3] for label, f in fuzzed.items() if f.errors}
    assert not errors, errors


def test_no_5xx_and_no_answer_breaks_its_documented_schema(fuzzed: dict[str, Found]) -> None:
    total = sum(f.requests for f in fuzzed.values())
    server = sum(n for f in fuzzed.values() for s, n in f.statuses.items() if s >= 500)
    broken = _failures(fuzzed, SERVER_ERRORS | BODY_SCHEMA)
    FIGURES.add(
        SECTION,
        "generated requests in all / 5xx / answers breaking their documented schema",
        f"{total:,} / {server} / {len(broken)}",
        COMMAND,
    )
    for label, examples in _failures(fuzzed, UNDOCUMENTED | REQUEST_SCHEMA).items():
        for kind, example in examples.items():
            FIGURES.add(SECTION, f"finding: {label}: {kind}", example, COMMAND)
    assert server == 0 and not broken, broken


def test_openapi_documents_every_status_and_content_type(fuzzed: dict[str, Found]) -> None:
    assert not _failures(fuzzed, UNDOCUMENTED)


def test_request_schemas_match_what_the_service_accepts(fuzzed: dict[str, Found]) -> None:
    assert not _failures(fuzzed, REQUEST_SCHEMA)


@dataclass
class Refusals:
    outcome: dict[str, Found]

    def statuses(self) -> Counter[int]:
        total = Counter[int]()
        for found in self.outcome.values():
            total.update(found.statuses)
        return total


@pytest.fixture(scope="module")
def refusals(service: Service) -> Refusals:
    """Generated requests (valid and invalid) to every operation that needs a key, without a valid
    one; and to the admin operations with a scorer key."""
    needs_key = [op for op in _operations(service.schema) if op.path.startswith(("/v1/", "/admin/"))]
    assert len(needs_key) == 5
    wrong = "afk_" + "x" * 43
    variants: dict[str, Any] = {
        "no Authorization header": lambda case: {},
        "unknown key": lambda case: {"Authorization": f"Bearer {wrong}"},
        "key without the Bearer scheme": lambda case: {"Authorization": service.admin},
        "Basic scheme": lambda case: {"Authorization": f"Basic {service.admin}"},
    }
    outcome: dict[str, Found] = {}
    for operation in needs_key:
        for name, headers in variants.items():
            found = Found()
            _fuzz(operation, headers, UNAUTH_EXAMPLES // len(variants), found, None)
            outcome[f"{operation.label} ({name})"] = found
    for operation in [op for op in needs_key if op.path.startswith("/admin/")]:
        found = Found()
        _fuzz(operation, lambda case: {"Authorization": f"Bearer {service.scorer}"}, 20, found, None)
        outcome[f"{operation.label} (scorer key)"] = found
    result = Refusals(outcome)
    FIGURES.add(
        SECTION, "calls without a valid key or role: answers by status", dict(result.statuses()), COMMAND
    )
    return result


def test_calls_without_a_valid_key_or_role_are_refused(refusals: Refusals) -> None:
    """Never served: 401 without a valid key, 403 for a scorer key on admin calls, whatever the body."""
    assert sum(refusals.statuses().values()) >= UNAUTH_EXAMPLES * 5
    for label, found in refusals.outcome.items():
        expected = 403 if label.endswith("(scorer key)") else 401
        # the key is checked before the body is read: a malformed body gets no 400 or 422
        assert set(found.statuses) == {expected}, (label, found.statuses, found.by_status)


def test_health_ready_and_metrics_need_no_key(service: Service) -> None:
    """The operations left open on purpose (probes and scraping); everything else needs a key."""
    open_ops = [op.path for op in _operations(service.schema) if not op.path.startswith(("/v1/", "/admin/"))]
    assert sorted(open_ops) == ["/health", "/metrics", "/ready"]
    for operation in _operations(service.schema):
        if operation.path in open_ops:
            found = Found()
            _fuzz(operation, lambda case: {}, 5, found, None)
            assert set(found.statuses) == {200}, (operation.label, found.statuses)
