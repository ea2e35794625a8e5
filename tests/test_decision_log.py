"""The decision log's Redis side (engine/decisions.py) on a real redis-server: the idempotency record
written with the buffer entry in one step, and the buffers' bound by size and by age."""

from __future__ import annotations

import time
from typing import cast

import orjson
import pytest
import redis
from payloads import entry_and_record, log_decision, logged_decision

from antifraud.engine.decision_entry import feature_list_id
from antifraud.engine.decision_record import Decision
from antifraud.engine.decisions import (
    AGE_CHECK_FROM,
    BUFFER_FULL,
    BufferBound,
    BufferFull,
    DecisionLog,
    answered,
)


def decision(i: int) -> Decision:
    return cast(Decision, logged_decision(f"tx-{i}", i))


def test_the_record_points_at_the_entry_and_a_second_put_writes_nothing(redis_client: redis.Redis) -> None:
    log = DecisionLog(redis_client, record_ttl_ms=60_000)
    assert log_decision(log, decision(1)) == "logged"
    record = log.record("tx-1")
    assert record is not None and record["stream_id"] is not None
    assert log.buffered(record["stream_id"]) == decision(1)
    assert 0 < cast(int, redis_client.pttl("af:{tx:tx-1}:d")) <= 60_000
    again = log_decision(log, {**decision(1), "verdict": "block"})
    assert again == record  # the earlier record, and nothing written
    assert redis_client.xlen("af:decisions") == 1


def test_at_the_size_bound_the_record_is_kept_unlogged_and_feedback_is_refused(
    redis_client: redis.Redis,
) -> None:
    log = DecisionLog(redis_client, bound=BufferBound(max_entries=3, max_age_s=0))
    assert [log_decision(log, decision(i)) for i in range(5)] == ["logged"] * 3 + ["buffer full"] * 2
    record = log.record("tx-4")
    assert record is not None and record["stream_id"] is None
    assert answered(record) == [BUFFER_FULL]  # a retry says it, as the first answer did
    assert redis_client.xlen("af:decisions") == 3  # nothing dropped, nothing added
    assert not log.log_contributions(
        {
            "transaction_id": "tx-0",
            "timestamp": "2026-03-01T12:00:00+00:00",
            "model_version": "m",
            "contributions": [],
        }
    )
    for _ in range(3):
        log.add_feedback({"transaction_id": "tx-0", "kind": "refund"})
    with pytest.raises(BufferFull, match="buffer is full"):
        log.add_feedback({"transaction_id": "tx-0", "kind": "refund"})


def test_the_age_bound_applies_once_the_buffer_is_long(redis_client: redis.Redis) -> None:
    assert BufferBound(max_entries=2000, max_age_s=12).age_from == 200  # a tenth of a small bound
    log = DecisionLog(redis_client, bound=BufferBound(max_entries=1_000_000, max_age_s=3600))
    two_hours_ago = int(time.time() * 1000) - 2 * 3_600_000
    # a buffer shorter than AGE_CHECK_FROM is a second or two of payments: its age is not read
    pipe = redis_client.pipeline(transaction=False)
    for n in range(AGE_CHECK_FROM - 2):
        pipe.xadd("af:decisions", {"d": "{}"}, id=f"{two_hours_ago}-{n}")
    pipe.execute()
    assert log_decision(log, decision(1)) == "logged"
    # one more makes it long enough, and its oldest entry is two hours old: over the bound
    assert log_decision(log, decision(2)) == "logged"
    assert redis_client.xlen("af:decisions") == AGE_CHECK_FROM
    assert log_decision(log, decision(3)) == "buffer full"
    # once the sink has written (and trimmed) the old entries, there is room again
    redis_client.xtrim("af:decisions", minid=f"{two_hours_ago + 1}-0")
    assert log_decision(log, decision(4)) == "logged"


def test_the_entry_holds_the_features_as_an_array_of_a_named_list(redis_client: redis.Redis) -> None:
    """The buffer entry carries its feature list's id and the values in its order; the names are kept
    once, in Redis, and every reader maps the array back to names."""
    log = DecisionLog(redis_client)
    logged = decision(1)
    assert log_decision(log, logged) == "logged"
    [(entry_id, fields)] = cast(list[tuple[bytes, dict[bytes, bytes]]], redis_client.xrange("af:decisions"))
    raw = orjson.loads(fields[b"d"])
    assert raw["features"] == list(logged["features"].values())
    names = list(logged["features"])
    assert raw["feature_list"] == feature_list_id(names)
    assert orjson.loads(cast(bytes, redis_client.hget("af:decisions:features", raw["feature_list"]))) == names
    # another process (the sink, a reader) knows the names from Redis alone
    assert DecisionLog(redis_client).buffered(entry_id.decode()) == logged


def test_names_lost_from_redis_are_saved_again_before_the_entry(redis_client: redis.Redis) -> None:
    """A Redis that lost the lists (restarted empty) while a worker kept its own copy: the next entry
    is written only once its list's names are back, so no entry is ever unreadable."""
    log = DecisionLog(redis_client)
    assert log_decision(log, decision(1)) == "logged"
    redis_client.delete("af:decisions:features")
    assert log_decision(log, decision(2)) == "logged"
    record = log.record("tx-2")
    assert record is not None and record["stream_id"] is not None
    assert DecisionLog(redis_client).buffered(record["stream_id"]) == decision(2)


def test_the_record_is_a_compact_array_and_reads_back_whole(redis_client: redis.Redis) -> None:
    """No key names, no transaction id (the key has it), no empty reasons: read back, the same record."""
    log = DecisionLog(redis_client)
    flagged = decision(2)
    flagged["reasons"] = {**flagged["reasons"], "skipped_rules": ["r1"], "fail_policy": "review"}
    _, expected = entry_and_record(log, flagged)
    assert log_decision(log, flagged) == "logged"
    raw = cast(bytes, redis_client.get("af:{tx:tx-2}:d"))
    assert raw.startswith(b"[1,") and b"tx-2" not in raw and b'"rules"' not in raw
    record = log.record("tx-2")
    assert record is not None
    assert record == {**expected, "stream_id": record["stream_id"]}
    assert list(record) == list(expected)  # the keys in their order too


def test_the_earlier_encodings_are_still_read(redis_client: redis.Redis) -> None:
    """What a buffer or Redis holds across an upgrade: an entry with its features by name, a record
    as a JSON object."""
    log = DecisionLog(redis_client)
    earlier = decision(3)
    entry_id = cast(bytes, redis_client.xadd("af:decisions", {"d": orjson.dumps(earlier)})).decode()
    assert log.buffered(entry_id) == earlier
    _, record = entry_and_record(log, earlier)
    record["stream_id"] = entry_id
    redis_client.set("af:{tx:tx-3}:d", orjson.dumps(record))
    assert log.record("tx-3") == record
    assert log_decision(log, earlier) == record  # a retry meets the earlier record and writes nothing
