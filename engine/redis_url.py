"""One Redis client from one URL, for a single Redis or a Redis Cluster.

- `redis://`, `rediss://`, `unix://`: one Redis (redis-py's `Redis.from_url`).
- `redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`, with TLS): a Redis Cluster,
  reached through any of the listed nodes (redis-py's `RedisCluster`, which asks them for the slot
  map and follows it as it changes: a failover needs no restart). Several seed nodes let a worker
  start while one of them is down. A password or database in the URL's usual places is passed on.

Every process that reaches Redis from a URL (the service's workers, the sink, the webhooks worker)
builds its client here, so all of them understand the same URLs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[ClusterNode]:
    """The seed nodes of a cluster URL, in its order (port 6379 when one is left out)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "6379")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    if not nodes:
        raise ValueError(f"no node in the cluster URL {url!r}")
    return nodes


def connect(url: str, **options: object) -> redis.Redis:
    """A client for `url` (connects lazily). `options` are redis-py's connection options
    (socket_timeout, ...), given to each node's connection on a cluster.

    The cluster client is typed as `redis.Redis`: it offers the same commands the engine uses (the
    keys of a multi-key call share a hash tag: docs/scale.md), and typing every caller with the
    union would only spread casts."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return redis.Redis.from_url(url, **options)
    # redis-py's default retries a failed node with back-off from a second up, beyond any request's
    # budget: fail at once instead, and let the caller retry (the scoring path's breaker, the sink's
    # next batch), by which time the slot map is reloaded
    options.setdefault("retry", Retry(NoBackoff(), 0))
    cluster = RedisCluster(
        startup_nodes=cluster_nodes(url),
        ssl=CLUSTER_SCHEMES[parts.scheme] == "rediss",
        username=parts.username or None,
        password=parts.password or None,
        **options,  # type: ignore[arg-type]
    )
    return cast(redis.Redis, cluster)


def on_cluster(client: redis.Redis | RedisCluster) -> bool:
    """Whether `client` talks to a Redis Cluster (built by `connect` from a cluster URL)."""
    return isinstance(client, RedisCluster)


def same_slot_as(key: str, client: redis.Redis) -> str:
    """A key prefix that lands in `key`'s slot on a cluster (`{key}`: a key without braces hashes
    whole, so the tag `{key}` hashes alike), and `key` itself on one Redis, where names stay as they
    always were. For keys that a script must touch together with `key`."""
    return f"{{{key}}}" if on_cluster(client) else key


def slot_pipeline(client: redis.Redis, key: str) -> Pipeline:
    """A pipeline (no transaction) for commands and scripts whose keys all share `key`'s slot.

    On one Redis it is the client's own. On a cluster, redis-py's cluster pipeline refuses scripts,
    so this is a pipeline of the node that holds the slot now; run it inside `following_moves`, so
    that when the node no longer serves the slot (a failover, a slot move) the cluster client
    reloads its slot map before the error reaches the caller."""
    if not on_cluster(client):
        return client.pipeline(transaction=False)
    cluster = cast(RedisCluster, client)
    return cluster.get_redis_connection(cluster.get_node_from_key(key)).pipeline(transaction=False)


@contextmanager
def following_moves(client: redis.Redis | RedisCluster) -> Iterator[None]:
    """Reload a cluster client's slot map when a call on one node's connection finds that node gone
    or no longer serving the slot (redis-py does so for its own calls, not for a node's pipeline)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        moved = not isinstance(exc, redis.ResponseError) or str(exc).startswith(("MOVED", "CLUSTERDOWN"))
        if moved and on_cluster(client):
            cast(RedisCluster, client).nodes_manager.initialize()
        raise
