"""The service and the CDP exporter against a real three-node Redis Cluster (`redis+cluster://` URL):
a request's IDs hash to different nodes and are still found in one lookup stage; an export's buckets
go to the nodes that own them."""

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
from tests.service_handle import TEST_BUCKET_BITS, put_record, read_profiles
from tests.test_cdp_export import people


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
    live = keyspace.Live(1, TEST_BUCKET_BITS)
    keys = {t: keyspace.locate("rta", live, t, v)[0] for t, v in ids.items()}
    assert len({client.keyslot(k) // 5462 for k in keys.values()}) > 1, "pick IDs that land on several nodes"
    put_record(client, "rta", pb.IDFA, ids[pb.IDFA], profile_pb2.Profile(one_id="on-a-node"))
    svc = service(redis_url=f"redis+cluster://127.0.0.1:{nodes[0].port}")
    svc.refresh()
    resp = svc.stub.Decide(pb.DecideRequest(request_id="c", device_ids=[
        pb.DeviceId(type=t, value=v) for t, v in ids.items()]), timeout=5)
    assert not resp.internal.degraded, resp
    assert resp.internal.one_id == "on-a-node" and resp.internal.matched_id_type == pb.IDFA


def test_cdp_exports_to_a_cluster(cluster, tmp_path):
    from cdp.export import ShrinkRefused, connect, export, live_entries, preflight  # noqa: PLC0415

    nodes, client = cluster
    url = f"redis+cluster://127.0.0.1:{nodes[1].port}"
    profiles, index = people(3000)
    exporter = connect(url)
    first = export(exporter, profiles, index, ns="cx", state_dir=tmp_path)
    assert first["keys_written"] == len(index) and first["layout_warnings"] == []
    buckets = [keyspace.bucket_key("cx", 1, b) for b in range(2 ** first["bucket_bits"])]
    assert len({client.keyslot(k) // 5462 for k in buckets}) == 3  # every node holds a share
    assert sum(client.hlen(k) for k in buckets) == len(index)
    ids = list(zip(index["id_type"], index["md5"], strict=True))
    assert [p.one_id for p in read_profiles(url, "cx", ids)] == index["one_id"].tolist()

    changed = profiles.copy()
    changed.loc[0, "order_count"] += 1
    second = export(exporter, changed, index, ns="cx", mode="incremental", state_dir=tmp_path)
    devices_of_person_0 = (index["one_id"] == profiles.loc[0, "one_id"]).sum()
    assert second["mode"] == "incremental" and second["keys_written"] == devices_of_person_0
    third = export(exporter, changed, index, ns="cx")  # a full one: generation 2, generation 1 removed on every node
    assert third["generation"] == 2 and third["keys_deleted"] == first["buckets"]
    assert not any(client.exists(k) for k in buckets)
    assert read_profiles(url, "cx", ids[:1])[0].order_count == changed.loc[0, "order_count"]
    # the size guard and the check before a run, across the nodes: recorded, then counted bucket by bucket
    assert preflight(url, "cx")["live_entries"] == len(index) and third["previous_entries_from"] == "recorded"
    client.delete(keyspace.export_meta_key("cx"))
    assert live_entries(exporter, "cx", keyspace.Live(2, third["bucket_bits"])) == (len(index), "counted")
    with pytest.raises(ShrinkRefused, match="no device entries"):
        export(exporter, changed, index.iloc[:0], ns="cx")
    exporter.close()
