"""Redis loaded with every event before the replay window, saved once as an RDB file in var/loadtest/."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import redis

from antifraud.engine.loadgen.replay import SAMPLE, Replay
from antifraud.engine.redis_server import EmbeddedRedis
from antifraud.engine.settings import ROOT

CACHE = ROOT / "var" / "loadtest"


def snapshot(history: pd.DataFrame, replay: Replay, use_cache: bool) -> Path:
    """An RDB file of Redis loaded with every event before the replay window (cached in var/).

    The cache key is the sample, the feature spec and score.lua, so a change to any of them makes
    a new snapshot; the backfill takes 80-110 s. Sets `replay.backfilled`.
    """
    from antifraud.features.online import OnlineFeatures

    digest = hashlib.sha256()
    for path in (SAMPLE, ROOT / "features" / "spec.yaml", ROOT / "features" / "score.lua"):
        digest.update(path.read_bytes())
    digest.update(str(replay.start_ms).encode())
    target = CACHE / f"snapshot-{digest.hexdigest()[:16]}.rdb"
    meta = target.with_suffix(".json")
    if use_cache and target.exists() and meta.exists():
        replay.backfilled = int(json.loads(meta.read_text())["events"])
        print(f"Redis snapshot: cached {target.relative_to(ROOT)} ({replay.backfilled:,} events)")
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="antifraud-load-") as tmp, EmbeddedRedis(Path(tmp)) as rds:
        client = redis.Redis.from_url(rds.url)
        replay.backfilled = OnlineFeatures(client).backfill(history, until_ms=replay.start_ms)
        client.save()
        client.close()
        shutil.copyfile(Path(tmp) / "dump.rdb", target)
    meta.write_text(json.dumps({"events": replay.backfilled, "until_ms": replay.start_ms}))
    print(
        f"Redis snapshot: backfilled {replay.backfilled:,} events in "
        f"{time.perf_counter() - started:.0f} s -> {target.relative_to(ROOT)}"
    )
    return target
