"""The same online executor runs unchanged on a real 3-node Redis Cluster, and still equals offline."""

from __future__ import annotations

import numpy as np
from redis.cluster import ClusterNode, RedisCluster

from antifraud.engine.redis_server import LocalCluster
from antifraud.features.offline import OfflineFeatures
from antifraud.features.online import OnlineFeatures
from antifraud.features.stream import payment_record, stream
from antifraud.training.simulator import simulate


def test_online_features_on_redis_cluster_equal_offline() -> None:
    history = simulate(days=7, cards=150, merchants=20, seed=4)
    history = history.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cluster = LocalCluster(3).start()
    try:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])
        online = OnlineFeatures(client)
        values = np.full((len(history), len(online.feature_names)), np.nan)
        for event, row, t_ms in stream(history):
            record = payment_record(history, row)
            if event == "payment":
                values[row] = online.score(record).values
            else:
                online.feedback(event, record["transaction_id"], t_ms, record)
        # the entities really were spread over several nodes
        nodes_with_keys = [n for n in client.get_primaries() if n.redis_connection.dbsize() > 0]
        assert len(nodes_with_keys) == 3
        client.close()
    finally:
        cluster.stop()
    offline = OfflineFeatures().transform(history)[online.feature_names].to_numpy()
    assert np.allclose(values, offline, rtol=1e-9, atol=1e-9, equal_nan=True)
