"""The service against a real three-node Redis Cluster (`redis+cluster://` URL): a request's IDs
hash to different nodes and are still found in one lookup stage."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2
from rta_service import keyspace
from rta_service.embedded_redis import EmbeddedRedis, find_redis_server


@pytest.fixture(scope="module")
def cluster():
    server = find_redis_server()
    cli = shutil.which("redis-cli") or str(Path(server).with_name("redis-cli"))
    if not Path(cli).exists():
        pytest.skip("no redis-cli to create a cluster with")
    nodes = [EmbeddedRedis(extra_args=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                       "--cluster-node-timeout", "2000")).start() for _ in range(3)]
    try:
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
        for _ in range(100):
            if client.cluster_info().get("cluster_state") == "ok":
                break
            __import__("time").sleep(0.1)
        yield nodes, client
        client.close()
    finally:
        for n in nodes:
            n.close()


def test_ids_on_different_nodes_are_found(cluster, service):
    nodes, client = cluster
    ids = {pb.IMEI: "40bab137c0b007a222fa3fa1782c5ea7", pb.OAID: "c0535cfbee4c09086c42fa39f120250f",
           pb.IDFA: "f2d1311ca5c1ecb214c19a26e9ddbad0"}
    keys = {t: keyspace.device_key("rta", 1, t, v) for t, v in ids.items()}
    assert len({client.keyslot(k) // 5462 for k in keys.values()}) > 1, "pick IDs that land on several nodes"
    client.set(keys[pb.IDFA], keyspace.encode_profile(profile_pb2.Profile(one_id="on-a-node")))
    client.set(keyspace.generation_key("rta"), 1)
    svc = service(redis_url=f"redis+cluster://127.0.0.1:{nodes[0].port}")
    svc.refresh()
    resp = svc.stub.Decide(pb.DecideRequest(request_id="c", device_ids=[
        pb.DeviceId(type=t, value=v) for t, v in ids.items()]), timeout=5)
    assert not resp.internal.degraded, resp
    assert resp.internal.one_id == "on-a-node" and resp.internal.matched_id_type == pb.IDFA
