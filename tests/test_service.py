"""The running service against a real Redis: bad input, health, reflection, metrics, overload."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2

OAID = "c0535cfbee4c09086c42fa39f120250f"


def _decide(svc, **fields):
    return svc.stub.Decide(pb.DecideRequest(request_id=fields.pop("request_id", "t"), **fields), timeout=5)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.parametrize("request_fields, message", [
    ({"request_id": ""}, "request_id is required"),
    ({"request_id": "x" * 129}, "request_id is longer than 128"),
    ({"device_ids": [pb.DeviceId(type=pb.OAID, value=OAID)] * 1000}, "1000 device_ids; at most 32"),
    ({"strategy_ids": ["s"] * 65}, "65 strategy_ids; at most 64"),
])
def test_invalid_requests_get_invalid_argument_and_the_server_stays_up(service, request_fields, message):
    svc = service()
    code, details = _code(lambda: _decide(svc, **request_fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details
    assert _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)]).decision == pb.BID


def test_huge_message_is_refused_by_size_and_server_stays_up(service):
    svc = service(max_message_bytes=64 * 1024)
    code, _ = _code(lambda: _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value="a" * 200_000)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _decide(svc, is_ping=True).internal.reasons == [pb.PING]


def test_long_but_admissible_strings_are_reasoned_no_bids(service):
    svc = service()
    resp = _decide(svc, device_ids=[pb.DeviceId(type=pb.IMEI, hash=pb.RAW, value="9" * 5000),
                                    pb.DeviceId(type=pb.OAID, value="f" * 5000)])
    assert resp.decision == pb.NO_BID
    assert [i.reason for i in resp.internal.ignored_ids] == [pb.MALFORMED_ID, pb.MALFORMED_ID]


def test_unknown_enum_values_are_tolerated(service):
    svc = service()
    req = pb.DecideRequest(request_id="e", platform=77, os=42, request_type=9,
                           device_ids=[pb.DeviceId(type=pb.OAID, hash=7, value=OAID),
                                       pb.DeviceId(type=pb.OAID, value=OAID)])
    resp = svc.stub.Decide(req, timeout=5)
    assert resp.decision == pb.BID  # the good ID still decides
    assert [(i.index, i.reason) for i in resp.internal.ignored_ids] == [(0, pb.MALFORMED_ID)]


def test_duplicate_ids_are_looked_up_once(service):
    svc = service()
    resp = _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID),
                                    pb.DeviceId(type=pb.OAID, value=OAID.upper())])
    assert [(i.index, i.reason) for i in resp.internal.ignored_ids] == [(1, pb.DUPLICATE_ID)]


def test_configured_precedence_changes_the_matched_id(service):
    imei = "40bab137c0b007a222fa3fa1782c5ea7"
    svc = service(id_precedence=("OAID", "IMEI"))
    svc.put_profile(pb.IMEI, imei, profile_pb2.Profile(one_id="by-imei"))
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="by-oaid"))
    resp = _decide(svc, device_ids=[pb.DeviceId(type=pb.IMEI, value=imei), pb.DeviceId(type=pb.OAID, value=OAID)])
    assert resp.internal.one_id == "by-oaid"


def test_new_generation_is_picked_up_without_restart(service):
    svc = service()
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="gen1"), generation=1)
    assert _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)]).internal.one_id == "gen1"
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="gen2"), generation=2)
    assert _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)]).internal.one_id == "gen2"


def test_health_reflection_and_metrics(service):
    svc = service()
    svc.put_profile(pb.OAID, "e" * 32, profile_pb2.Profile(one_id="someone else"))
    health = health_pb2_grpc.HealthStub(svc.channel)
    deadline = time.monotonic() + 5
    while health.Check(health_pb2.HealthCheckRequest(service="rta.v1.RtaService")).status != \
            health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "never SERVING"
        time.sleep(0.05)

    refl = reflection_pb2_grpc.ServerReflectionStub(svc.channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"rta.v1.RtaService", "grpc.health.v1.Health"} <= names

    _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)])
    _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value="bad")])
    text = urllib.request.urlopen(f"http://127.0.0.1:{svc.server.admin_port}/metrics", timeout=5).read().decode()
    assert 'rta_decisions_total{decision="BID",model_version="golden-linear-1",reason="SCORED"} 1.0' in text
    assert 'rta_decisions_total{decision="NO_BID",model_version="golden-linear-1",reason="NO_VALID_ID"} 1.0' in text
    assert 'rta_stage_seconds_bucket{le="0.0001",stage="store"}' in text
    assert 'rta_ignored_ids_total{reason="MALFORMED_ID"} 1.0' in text
    assert OAID not in text  # no device IDs in labels


def test_overload_is_refused_fast_not_queued(service):
    """With Redis paused, calls hang until their lookup times out; past max_in_flight the server must
    answer RESOURCE_EXHAUSTED at once rather than queue."""
    svc = service(max_in_flight=4, redis_timeout_ms=1500, default_deadline_ms=3000)
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    svc.redis.execute_command("CLIENT", "PAUSE", 1000, "ALL")
    codes, times = [], []
    lock = threading.Lock()

    def call():
        t0 = time.monotonic()
        try:
            _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)])
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with lock:
            codes.append(code)
            times.append((code, time.monotonic() - t0))

    threads = [threading.Thread(target=call) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    refused = [dt for code, dt in times if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(refused) >= 6, codes
    assert max(refused) < 0.5, f"refusals took up to {max(refused):.3f}s"
    assert codes.count(grpc.StatusCode.OK) >= 1


def test_password_and_database_from_the_url(service):
    from rta_service.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(extra_args=("--requirepass", "s3cret")) as locked:
        url = f"redis://:s3cret@127.0.0.1:{locked.port}/3"
        svc = service(redis_url=url)
        svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="in-db-3"))
        resp = _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)])
        assert resp.internal.one_id == "in-db-3" and not resp.internal.degraded
        svc.stop()


def test_no_export_in_redis_is_degraded_and_not_ready(service):
    """An empty Redis (restarted, or the CDP never ran) must not turn every member into an unknown
    device: the answers are the fallbacks, flagged, with the short TTL, and health says NOT_SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    svc = service()
    resp = _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)])
    assert resp.internal.degraded and resp.internal.reasons[0] == pb.NO_PROFILES
    assert resp.cache_ttl_seconds == 60
    health = health_pb2_grpc.HealthStub(svc.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    assert not _decide(svc, device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)]).internal.degraded


def _batch_sizes(svc) -> tuple[float, float]:
    """(calls decided in batches of one, all batches) from the admin port."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{svc.server.admin_port}/metrics", timeout=5).read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("rta_batch_size_"))
    return float(values['rta_batch_size_bucket{le="1.0"}']), float(values["rta_batch_size_count"])


def test_batch_window_gathers_concurrent_calls_but_a_lone_call_never_waits(service):
    svc = service(batch_window_us=5000)
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    request = pb.DecideRequest(request_id="w", device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)])
    lone = [svc.stub.Decide(request, timeout=5) for _ in range(5)]
    assert all(r.internal.reasons[0] == pb.SCORED for r in lone)
    assert sorted(r.processing_time_us for r in lone)[2] < 5000  # the median call did not sit out the window
    assert _batch_sizes(svc) == (5, 5)

    futures = [svc.stub.Decide.future(request, timeout=5) for _ in range(32)]
    answers = [f.result() for f in futures]
    assert all(r.internal.reasons[0] == pb.SCORED and r.internal.one_id == "p" for r in answers)
    _, batches = _batch_sizes(svc)
    assert batches - 5 < 32, "32 concurrent calls were never decided together"
