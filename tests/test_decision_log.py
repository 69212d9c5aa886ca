"""The decision log: records written by the running service, drop-and-count when it cannot keep up,
and `rta logs export` to Parquet without loss or duplicates, even when killed mid-run."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import redis

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2
from rta_service import decision_log as dl
from rta_service.embedded_redis import free_port
from rta_service.features import N_FEATURES, build_features
from rta_service.ids import hash_raw
from tests.service_handle import wait_for
from training import log_export

RAW_OAID = "1c9f4f2b-5a2e-4c65-9d3b-0a8e6f1f2d3c"
OAID_MD5 = "c0535cfbee4c09086c42fa39f120250f"


def _records(r: redis.Redis, ns: str = "rta") -> list[dict]:
    return [dl.to_dict(rec) for _, f in r.xrange(dl.stream_key(ns)) for rec in dl.decode_entry(f[b"b"])]


def test_every_decision_is_logged_with_what_training_needs(service):
    svc = service(decision_log_flush_ms=10)
    profile = profile_pb2.Profile(one_id="p-1", is_member=True, order_count=3, last_order_ts=int(time.time()) - 86400,
                                  first_seen_ts=int(time.time()) - 400 * 86400, monetary_fen=50000)
    svc.put_profile(pb.OAID, OAID_MD5, profile)
    t0 = time.time()
    known = svc.stub.Decide(pb.DecideRequest(request_id="known", os=pb.ANDROID, platform=pb.TENCENT,
                                             device_ids=[pb.DeviceId(type=pb.OAID, value=OAID_MD5)]), timeout=5)
    raw = svc.stub.Decide(pb.DecideRequest(request_id="raw", os=pb.ANDROID, device_ids=[
        pb.DeviceId(type=pb.OAID, hash=pb.RAW, value=RAW_OAID)]), timeout=5)
    svc.stub.Decide(pb.DecideRequest(request_id="noid"), timeout=5)
    svc.stub.Decide(pb.DecideRequest(request_id="ping", is_ping=True), timeout=5)
    r = svc.redis
    assert wait_for(lambda: len(_records(r)) >= 3)
    time.sleep(0.1)
    recs = {x["request_id"]: x for x in _records(r)}
    assert set(recs) == {"known", "raw", "noid"}  # pings are not decisions
    k = recs["known"]
    assert k["one_id"] == "p-1" and k["matched_id"] == OAID_MD5 and k["matched_id_type"] == pb.OAID and k["known"]
    assert math.isclose(k["score"], known.internal.score, rel_tol=1e-6)
    assert k["model_version"] == known.internal.model_version
    assert k["experiment_bucket"] == known.internal.experiment_bucket and k["holdout"] == known.internal.holdout
    assert k["strategy_ids"] == [res.strategy_id for res in known.results]
    assert k["strategy_decisions"] == [res.decision for res in known.results]
    assert k["decision"] == known.decision and k["platform"] == pb.TENCENT
    assert t0 - 1 <= k["ts"] <= time.time()
    # The features as the model saw them: rebuilding them at the logged time gives the same row.
    assert len(k["features"]) == N_FEATURES
    expected = build_features(profile, pb.ANDROID, pb.OAID, k["ts"])
    assert all((a is None and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3)
               for a, b in zip(k["features"], expected, strict=True))
    # Only hashed identifiers reach the log.
    assert recs["raw"]["ids"] == [f"{pb.OAID}:{hash_raw(pb.OAID, RAW_OAID)}"] and raw.internal.known is False
    assert RAW_OAID.encode() not in b"".join(f[b"b"] for _, f in r.xrange(dl.stream_key("rta")))
    assert recs["noid"]["ids"] == [] and recs["noid"]["reasons"] == [pb.NO_DEVICE_ID]
    assert recs["noid"]["features"] is None


def test_decisions_go_on_when_the_log_cannot_write_and_the_drops_are_counted(service):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    svc = service(decision_log_url=dead, decision_log_flush_ms=10)
    svc.put_profile(pb.OAID, OAID_MD5, profile_pb2.Profile(one_id="p-2"))
    for i in range(20):
        resp = svc.stub.Decide(pb.DecideRequest(request_id=f"r{i}", device_ids=[
            pb.DeviceId(type=pb.OAID, value=OAID_MD5)]), timeout=5)
        assert resp.internal.known and not resp.internal.degraded
    counter = svc.server.metrics.log_dropped.labels(reason="redis_error")
    assert wait_for(lambda: counter._value.get() == 20)
    assert svc.server.decision_log.written == 0


def _Req(rid):  # noqa: N802 - reads like the message it builds
    return pb.DecideRequest(request_id=rid)


def _Resp(rid):  # noqa: N802
    return pb.DecideResponse(request_id=rid, decision=pb.NO_BID,
                             internal=pb.Internal(reasons=[pb.NO_DEVICE_ID], model_version="m"))


def test_a_full_buffer_drops_and_counts_instead_of_growing():
    log = dl.DecisionLog("redis://127.0.0.1:1/0", "rta", capacity=10)
    for i in range(7):  # 7 micro-batches of 3 records; only 3 whole batches fit in 10
        log.record(time.time(), [_Req(f"{i}-{j}") for j in range(3)], [_Resp(f"{i}-{j}") for j in range(3)], [])
    assert log._buffered == 9 and log.dropped == 12
    assert len(log._take()) == 9 and log._buffered == 0


def _fill_stream(url: str, n: int, hours: int = 3, bad: int = 0, per_entry: int = 1) -> list[str]:
    """n records spread over `hours` hours, `per_entry` to a stream entry as the service writes them, and
    `bad` entries that are not records; returns the entry IDs."""
    r = redis.Redis.from_url(url)
    base = 1_749_999_600.0  # an hour boundary (UTC)
    ids = []
    pipe = r.pipeline(transaction=False)
    for start in range(0, n, per_entry):
        recs = [dl.encode(base + (i * hours * 3600.0) / n, _Req(f"req-{i}"), _Resp(f"req-{i}"), None, None)
                for i in range(start, min(n, start + per_entry))]
        pipe.xadd(dl.stream_key("rta"), {"n": len(recs), "b": dl.encode_entry(recs)})
        if bad and start % (n // bad) == 0:
            pipe.xadd(dl.stream_key("rta"), {"b": b"\xff not a batch"})
        if len(pipe) >= 1000:
            ids += [x.decode() for x in pipe.execute()]
    ids += [x.decode() for x in pipe.execute()]
    return ids


def _exported(out: Path) -> list[str]:
    return log_export.read_log(out).column("request_id").to_pylist()


def test_export_killed_mid_run_then_rerun_loses_and_duplicates_nothing(redis_url, tmp_path):
    n = 30_000
    _fill_stream(redis_url, n, per_entry=3)
    out = tmp_path / "log"
    cmd = [sys.executable, "-m", "rta_service.cli", "logs", "export", "--out", str(out), "--redis-url", redis_url,
           "--batch", "70"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: len(list(out.glob("hour=*/part-*.parquet"))) >= 5, timeout=60), \
            proc.stderr.read().decode() if proc.poll() is not None else "no files written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = _exported(out)
    assert 0 < len(partial) < n, "the kill should land mid-run"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = _exported(out)
    assert len(got) == n and set(got) == {f"req-{i}" for i in range(n)}  # no loss, no duplicates
    assert len(list(out.glob("hour=*"))) == 3
    r = redis.Redis.from_url(redis_url)
    assert r.xpending(dl.stream_key("rta"), log_export.GROUP)["pending"] == 0
    for f in out.glob("hour=*/part-*.parquet"):  # each record sits in the partition of its hour
        hours = {log_export.hour_dir(t) for t in pq.read_table(f).column("ts").to_pylist()}
        assert hours == {f.parent.name}


def test_a_crash_between_write_and_ack_is_replayed_without_duplicates(redis_url, tmp_path):
    ids = _fill_stream(redis_url, 1000, hours=2, bad=10)
    r0 = redis.Redis.from_url(redis_url)
    nameless = dl.encode(1_750_000_000.0, _Req(""), _Resp(""), None, None)  # a record without a request_id
    r0.xadd(dl.stream_key("rta"), {"b": dl.encode_entry([dl.encode(1_750_000_000.0, _Req("ok"), _Resp("ok"), None,
                                                                   None), nameless])})
    r = redis.Redis.from_url(redis_url)
    key = dl.stream_key("rta")
    r.xgroup_create(key, log_export.GROUP, id="0")
    reply = r.xreadgroup(log_export.GROUP, log_export.CONSUMER, {key: ">"}, count=333)
    entries = [(e.decode(), f) for e, f in reply[0][1]]
    log_export.write_batch(tmp_path, entries)  # written, then "crashed" before XACK
    totals = log_export.export(redis_url, tmp_path, batch=128)  # a different batch size on the rerun
    assert totals["skipped"] > 300  # the crashed run's records were found, not rewritten
    got = _exported(tmp_path)
    assert len(got) == 1001 and len(set(got)) == 1001
    rejected = [json.loads(line) for f in (tmp_path / "_rejected").glob("*.jsonl") for line in f.open()]
    whole = [x for x in rejected if x["entry_index"] is None]
    partial = [x for x in rejected if x["entry_index"] is not None]
    assert len(whole) == 10 and {x["entry_id"] for x in whole} <= set(ids)
    assert len(partial) == 1 and partial[0]["entry_index"] == 1 and "without request_id" in partial[0]["error"]
    assert r.xpending(key, log_export.GROUP)["pending"] == 0
    assert log_export.export(redis_url, tmp_path)["written"] == 0  # idempotent: nothing new, nothing rewritten


def test_the_writer_flushes_on_close(redis_url):
    async def go():
        log = dl.DecisionLog(redis_url, "rta", flush_s=60)
        log.start()
        log.record(time.time(), [_Req("a"), _Req("b")], [_Resp("a"), _Resp("b")], [])
        await log.close()
        return log.written

    assert asyncio.run(go()) == 2
    assert [x["request_id"] for x in _records(redis.Redis.from_url(redis_url))] == ["a", "b"]
