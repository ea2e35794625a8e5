"""Idempotency at scale: 10,000 payments, each sent 3 times at once on 64 connections to 2 workers.

The three copies of a payment are due one after the other (1.7 ms apart at 600 requests/s) and go
out on different keep-alive connections, so they are scored concurrently by both workers. Then:

- every request is answered 200, and the non-degraded answers for one transaction are identical;
- the decision log holds exactly one decision per transaction (and nothing else): one stream entry
  per transaction, counted across the buffer stream and the durable store the service's sink moves
  it to (one row each once the sink has drained the buffer);
- the counters equal a single send: a probe payment per card, timed after every payment, reads
  card_count_{10m,1h,24h,7d,30d}, card_sum_24h, card_max_24h, card_distinct_merchants_24h,
  and card_merchant_count_24h equal to what the 10,000 payments sent once give; and the dedupe ring
  of every entity (card, customer, device, ip, email, merchant, terminal: the fingerprints of its
  last 64 transactions; card x merchant lives in the card's state) holds each of them exactly once.

A payment none of whose copies was recorded (each answered degraded because the breaker was open:
noise on a shared VM) is sent again, as a client would retry it, before the counters are compared;
retries are counted.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from .helpers import (
    FIGURES,
    MachineLoad,
    Payments,
    Service,
    entity_members,
    http_request,
    ms_of,
    pct,
    read_log,
    replay,
    ring_agrees,
    stored_decisions,
    wait_drained,
)

N = 10_000
COPIES = 3
RATE = 600.0
T0_MS = ms_of("2026-03-11T12:00:00Z")
STEP_MS = 50  # 10,000 payments over 500 s of event time; probes at +520 s: inside every window
SECTION = "4. idempotency"
COMMAND = ".venv/bin/pytest -q -s tests/reliability/test_idempotency.py"
COMPARED = (
    "card_count_10m",
    "card_count_1h",
    "card_count_24h",
    "card_count_7d",
    "card_count_30d",
    "card_sum_24h",
    "card_max_24h",
    "card_distinct_merchants_24h",
    "card_merchant_count_24h",
)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "timings"} == {k: v for k, v in b.items() if k != "timings"}


def _expected(payments: list[dict[str, Any]], card: str, merchant: str) -> dict[str, float]:
    mine = [p for p in payments if p["card_id"] == card]
    amounts = [p["amount"] for p in mine]
    return {
        **{f"card_count_{w}": float(len(mine)) for w in ("10m", "1h", "24h", "7d", "30d")},
        "card_sum_24h": float(sum(round(a * 1000) for a in amounts)) / 1000,
        "card_max_24h": max(amounts),
        "card_distinct_merchants_24h": float(len({p["merchant_id"] for p in mine})),
        "card_merchant_count_24h": float(sum(1 for p in mine if p["merchant_id"] == merchant)),
    }


@pytest.mark.timeout(900)
def test_three_concurrent_copies_count_once() -> None:
    payments = Payments.make(N, "idm", T0_MS, STEP_MS)
    txids = [p["transaction_id"] for p in payments]
    started = time.perf_counter()
    with Service("idempotency", workers=2, tcp=False, appendonly=False) as service:
        load = MachineLoad(service)
        requests = [
            http_request(service.port, service.scorer_key, "/v1/score", p)
            for p in payments
            for _ in range(COPIES)
        ]
        run = replay(service.port, requests, RATE, connections=64, drain_s=120)
        burst_s = time.perf_counter() - started
        FIGURES.add(SECTION, "machine load over the burst", load.summary(), COMMAND)
        status = Counter(int(s) for s in run.status)
        answers = run.answers()
        latency = run.latency_ms
        FIGURES.add(
            SECTION, "requests: 10,000 payments x 3 copies at 600/s, 64 connections", len(requests), COMMAND
        )
        FIGURES.add(SECTION, "HTTP statuses", dict(status), COMMAND)
        FIGURES.add(
            SECTION,
            "latency from due time p50 / p99 / max (ms)",
            f"{pct(latency, 50):.1f} / {pct(latency, 99):.1f} / {latency.max():.1f}",
            COMMAND,
        )
        assert status == Counter({200: len(requests)}), status

        by_tx: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for k, answer in enumerate(answers):
            assert answer is not None
            by_tx[txids[k // COPIES]].append(answer)
        differing, replayed, degraded = [], 0, 0
        for txid, group in by_tx.items():
            full = [a for a in group if not a["degraded"]]
            degraded += len(group) - len(full)
            if any(not _same(full[0], a) for a in full[1:]):
                differing.append(txid)
            # an answer served from the stored decision has the timings it was stored with (no log_ms)
            replayed += sum(1 for a in full if "log_ms" not in a["timings"])
        FIGURES.add(
            SECTION,
            "answers served from the stored decision (a copy scored after or beside the first)",
            replayed,
            COMMAND,
        )
        FIGURES.add(SECTION, "transactions whose full answers differ", len(differing), COMMAND)
        FIGURES.add(SECTION, "degraded answers during the burst (breaker noise)", degraded, COMMAND)
        assert not differing, [by_tx[t] for t in differing[:2]]

        # A payment that no copy got recorded (each answered degraded: the breaker was open) is sent
        # again, as a client would retry it, until Redis has recorded it. Bounded: 5 rounds.
        client = service.client()
        recorded: set[str] = set()
        rounds = retried = 0
        while rounds < 6:
            members = entity_members(client, "card", sorted({p["card_id"] for p in payments}), txids)
            recorded = set().union(*members.values())
            missing = [i for i, t in enumerate(txids) if t not in recorded]
            if not missing or rounds == 5:
                break
            rounds += 1
            retried += len(missing)
            time.sleep(1.0)
            replay(service.port, [requests[i * COPIES] for i in missing], 100.0, connections=8)
        client.close()
        FIGURES.add(
            SECTION,
            "payments re-sent because no copy was recorded / rounds",
            f"{retried} / {rounds}",
            COMMAND,
        )
        assert recorded >= set(txids)

        client = service.client()
        try:
            # A payment none of whose copies was logged (each answer said "decision log: not
            # stored": its log call failed, on a busy machine a timeout) is sent again, as a client
            # does with such an answer, until it is: the retry is decided without state and logged.
            relogged = log_rounds = 0
            while True:
                drained_s = wait_drained(client, 60)
                logged = read_log(client, service.store_url)
                unlogged = [i for i, t in enumerate(txids) if t not in logged.decisions]
                if not unlogged or log_rounds == 5:
                    break
                log_rounds += 1
                relogged += len(unlogged)
                replay(service.port, [requests[i * COPIES] for i in unlogged], 100.0, connections=8)
            FIGURES.add(
                SECTION,
                "payments re-sent because no copy was logged / rounds",
                f"{relogged} / {log_rounds}",
                COMMAND,
            )
            per_tx = Counter({t: logged.times_logged(t) for t in logged.decisions})
            rows = logged.store_decision_rows
            FIGURES.add(
                SECTION,
                "decision log (buffer + store, after a sink drain of "
                f"{drained_s:.1f} s): entries / distinct transactions / logged twice / store rows twice",
                f"{sum(per_tx.values()):,} / {len(per_tx):,} / {sum(1 for c in per_tx.values() if c > 1)}"
                f" / {sum(1 for c in rows.values() if c > 1)}",
                COMMAND,
            )
            assert per_tx == Counter(set(txids)), "the decision log must hold each transaction exactly once"
            assert rows == Counter(set(txids)), "the store must hold each transaction exactly once"
            stored: dict[str, Any] = {t: logged.decision(t) for t in txids}
            assert all(stored[t] is not None for t in txids)
            pinned = sum(1 for t in txids if stored[t]["degraded"])
            FIGURES.add(
                SECTION,
                "payments whose stored (idempotency) decision is a degraded one: a retry gets it back",
                pinned,
                COMMAND,
            )

            by_card: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for p in payments:
                by_card[p["card_id"]].append(p)
            members = entity_members(client, "card", list(by_card), txids)
            sent = {c: [p["transaction_id"] for p in ps] for c, ps in by_card.items()}
            wrong_sets = [c for c, ids in sent.items() if not ring_agrees(members[c], ids)]
            assert not wrong_sets, wrong_sets[:5]
            logs, wrong_logs = _entity_logs(client, payments)
            FIGURES.add(
                SECTION,
                "entity dedupe rings compared with a single send (all 7 entities) / differing",
                f"{logs:,} / {len(wrong_logs)}",
                COMMAND,
            )
            assert not wrong_logs, wrong_logs[:5]

            probes = []
            for j, (card, mine) in enumerate(by_card.items()):
                body = dict(mine[0])
                body.update(transaction_id=f"idm-probe-{j}", timestamp=_iso(T0_MS + 520_000 + j))
                probes.append((card, body))
            probe_stored, probe_counted = _send_probes(service, client, [b for _, b in probes])
        finally:
            client.close()
        mismatches = []
        for (card, body), decision, earlier in zip(probes, probe_stored, probe_counted, strict=True):
            expected = _expected(payments + earlier, card, body["merchant_id"])
            for name in COMPARED:
                seen = decision["features"][name]
                if seen is None or abs(seen - expected[name]) > 1e-9 * max(1.0, abs(expected[name])):
                    mismatches.append((card, name, seen, expected[name]))
        FIGURES.add(
            SECTION,
            f"cards probed / values compared ({len(COMPARED)} features) / differing from a single send",
            f"{len(probes):,} / {len(probes) * len(COMPARED):,} / {len(mismatches)}",
            COMMAND,
        )
        FIGURES.add(
            SECTION,
            "wall time (burst / whole test)",
            f"{burst_s:.0f} s / {time.perf_counter() - started:.0f} s",
            COMMAND,
        )
        assert not mismatches, mismatches[:10]


def _entity_logs(client: Any, payments: list[dict[str, Any]]) -> tuple[int, list[Any]]:
    """Compare every entity's dedupe ring (its last 64 transactions) with the payments sent once."""
    from antifraud.features.spec import load_spec

    spec = load_spec()
    wrong, compared = [], 0
    for entity in spec.used_entities():
        if entity in spec.within:
            continue  # kept in another entity's state (card x merchant in the card): no ring of its own
        expected: dict[str, list[str]] = defaultdict(list)
        for p in payments:
            key = spec.entity_key(entity, p)
            if key is not None:
                expected[key].append(p["transaction_id"])
        members = entity_members(client, entity, list(expected), [p["transaction_id"] for p in payments])
        compared += len(expected)
        wrong += [(entity, k) for k, ids in expected.items() if not ring_agrees(members[k], ids)]
    return compared, wrong


def _send_probes(
    service: Service, client: Any, bodies: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Send each probe until its decision is stored and full. A probe answered degraded was not
    stored (sent again with the same id), or, rarely, stored degraded, and is sent again under a new
    id. A degraded one may still have reached the counters (a features call that timed out after
    Redis ran it, or a first request whose log call failed and whose copy logged the retry's
    decision): when its card's dedupe ring holds it, it is returned among the probe's earlier
    counted payments. Bounded: 5 rounds."""
    bodies = [dict(b) for b in bodies]
    counted: list[list[dict[str, Any]]] = [[] for _ in bodies]
    decisions: list[dict[str, Any] | None] = [None] * len(bodies)
    pending = list(range(len(bodies)))
    for attempt in range(5):
        if attempt:
            time.sleep(1.0)
        requests = [http_request(service.port, service.scorer_key, "/v1/score", bodies[k]) for k in pending]
        replay(service.port, requests, 300.0, connections=16)
        stored = stored_decisions(client, [bodies[k]["transaction_id"] for k in pending], service.store_url)
        for k in pending:
            decisions[k] = stored[bodies[k]["transaction_id"]]
            if decisions[k] is not None and decisions[k]["degraded"]:  # type: ignore[index]
                txid, card = bodies[k]["transaction_id"], bodies[k]["card_id"]
                if txid in entity_members(client, "card", [card], [txid])[card]:
                    counted[k].append(dict(bodies[k]))
                bodies[k]["transaction_id"] += f"-r{attempt}"
        pending = [k for k in pending if decisions[k] is None or decisions[k]["degraded"]]  # type: ignore[index]
        if not pending:
            break
    assert not pending, [bodies[k] for k in pending[:3]]
    return decisions, counted  # type: ignore[return-value]


def _iso(ms: int) -> str:
    from .helpers import iso_ms

    return iso_ms(ms)
