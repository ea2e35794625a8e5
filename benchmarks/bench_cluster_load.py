"""The service on a local Redis Cluster (N primaries, each with a replica) under a steady load: the
answers' latency and the share degraded, per shard count and rate. A first measure for docs/scale.md;
`load_http.py` (one Redis, a warm snapshot) remains the reference matrix.

    PYTHONPATH=tests .venv/bin/python benchmarks/bench_cluster_load.py --shards 1 3 --rates 200 400 800

The feature state starts empty (no snapshot: an RDB cannot be loaded into a sharded cluster), so the
first seconds' payments find little history; each cell uses fresh transaction ids.
"""

from __future__ import annotations

import argparse
import time

from reliability.helpers import Payments, Service, http_request, pct, replay

from antifraud.engine.redis_server import LocalCluster

T0_MS = 1_780_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rates", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wait-replicas", type=int, default=0, help="ANTIFRAUD_REDIS_WAIT_REPLICAS")
    args = parser.parse_args()
    for shards in args.shards:
        cluster = LocalCluster(shards, replicas=1).start()
        try:
            env = {"ANTIFRAUD_REDIS_WAIT_REPLICAS": str(args.wait_replicas)}
            with Service("cluster-load", workers=args.workers, redis_url=cluster.url, env=env) as service:
                for rate in args.rates:
                    n = int(rate * args.seconds)
                    bodies = Payments.make(n, f"s{shards}r{rate}-{time.time_ns()}", T0_MS, 1000 / rate)
                    run = replay(
                        service.port,
                        [http_request(service.port, service.scorer_key, "/v1/score", b) for b in bodies],
                        rate,
                    )
                    answers = run.answers()
                    ok = [a for a in answers if a]
                    degraded = sum(1 for a in ok if a["degraded"])
                    lat = run.latency_ms[len(run.latency_ms) // 5 :]  # the first fifth is warm-up
                    print(
                        f"shards {shards} workers {args.workers} rate {rate}/s: answered {len(ok)}/{n}, "
                        f"degraded {degraded}, p50 {pct(lat, 50):.1f} p99 {pct(lat, 99):.1f} "
                        f"max {lat.max():.1f} ms",
                        flush=True,
                    )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
