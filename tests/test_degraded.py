"""Redis killed, paused and restarted while the service answers: every call still gets an answer in
time (the strategies' fallbacks, with a reason), and the service recovers by itself."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rta.v1 import decision_pb2 as pb
from rta.v1 import profile_pb2
from rta_service.embedded_redis import EmbeddedRedis
from tests.service_handle import make_live, wait_for

OAID = "c0535cfbee4c09086c42fa39f120250f"
REQUEST = pb.DecideRequest(request_id="d", device_ids=[pb.DeviceId(type=pb.OAID, value=OAID)])
DEADLINE_S = 0.060  # what the platform allows end to end; the service must answer inside it


@pytest.fixture
def own_redis():
    server = EmbeddedRedis().start()
    yield server
    server.close()


def _decide(svc, timeout=1.0):
    """A call whose semantics are under test: a generous client timeout, so that a scheduling hiccup of
    this shared machine cannot fail it; the service's own time is checked against DEADLINE_S instead."""
    return svc.stub.Decide(REQUEST, timeout=timeout)


def _health(svc):
    return health_pb2_grpc.HealthStub(svc.channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status


def test_redis_killed_then_restarted(service, own_redis):
    svc = service(redis_url=own_redis.url)
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    assert _decide(svc).internal.reasons[0] == pb.SCORED
    # Health follows the store every 50 ms: wait until it has seen the live export, or a fast run
    # could stop Redis before the service ever became SERVING.
    assert wait_for(lambda: _health(svc) == health_pb2.HealthCheckResponse.SERVING)

    own_redis.stop()
    for _ in range(20):
        resp = _decide(svc)
        assert resp.processing_time_us < DEADLINE_S * 1e6
        assert resp.internal.degraded
        assert resp.internal.reasons[0] == pb.STORE_ERROR
        by_id = {r.strategy_id: r for r in resp.results}
        assert by_id["acq_new"].decision == pb.BID and by_id["acq_new"].weight_factor == 0.5  # its fallback
        assert by_id["winback_lapsed"].decision == pb.NO_BID
        assert resp.cache_ttl_seconds == 60
    # Still SERVING: every instance shares this Redis, and answering fallbacks is the designed behaviour.
    assert _health(svc) == health_pb2.HealthCheckResponse.SERVING

    own_redis.start()  # same port, but empty: it must not be read as "every device is unknown"
    assert wait_for(lambda: _decide(svc).internal.reasons[0] == pb.NO_PROFILES)
    resp = _decide(svc)
    assert resp.internal.degraded and resp.cache_ttl_seconds == 60
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))  # the CDP exports again
    assert wait_for(lambda: not _decide(svc).internal.degraded)
    assert _decide(svc).internal.one_id == "p"


def test_slow_redis_times_out_within_the_deadline(service, own_redis):
    svc = service(redis_url=own_redis.url, redis_timeout_ms=8)
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    svc.redis.execute_command("CLIENT", "PAUSE", 500, "ALL")
    resp = _decide(svc)
    assert resp.processing_time_us < DEADLINE_S * 1e6  # gave up on Redis after ~8 ms, not 500
    assert resp.internal.degraded and resp.internal.reasons[0] == pb.STORE_TIMEOUT
    time.sleep(0.6)
    assert wait_for(lambda: not _decide(svc).internal.degraded)


def test_short_caller_deadline_skips_the_lookup(service):
    svc = service(deadline_margin_ms=900, min_lookup_ms=1)
    resp = _decide(svc, timeout=0.5)  # less than the margin: no time to look anything up
    assert resp.internal.degraded and resp.internal.reasons[0] == pb.DEADLINE_EXCEEDED


def test_redis_restart_under_load_every_call_answered(service, own_redis):
    svc = service(redis_url=own_redis.url)
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    stop = threading.Event()
    results: list[tuple[str, float]] = []
    lock = threading.Lock()

    def load():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                resp = svc.stub.Decide(REQUEST, timeout=DEADLINE_S)
                outcome, in_service = pb.Reason.Name(resp.internal.reasons[0]), resp.processing_time_us / 1e6
            except grpc.RpcError as exc:
                outcome, in_service = exc.code().name, None
            with lock:
                results.append((outcome, time.monotonic() - t0, in_service))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    own_redis.stop()
    time.sleep(1.0)
    own_redis.start()
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    outcomes = [o for o, _, _ in results]
    assert set(outcomes) <= {"SCORED", "STORE_ERROR", "STORE_TIMEOUT", "NO_PROFILES", "DEADLINE_EXCEEDED"}, \
        set(outcomes)
    assert "STORE_ERROR" in outcomes
    assert outcomes[-1] == "SCORED"  # recovered by itself
    # Every answer the service gave left it inside the deadline. The client, sharing two cores with the
    # server and Redis, may still see a few calls miss it while Redis restarts: no more than the 2% of
    # timeouts and errors Tencent tolerates in production.
    assert all(t < DEADLINE_S for _, _, t in results if t is not None)
    missed = sum(1 for o, dt, _ in results if o == "DEADLINE_EXCEEDED" or dt >= DEADLINE_S)
    assert missed <= 0.02 * len(results), f"{missed} of {len(results)} calls missed the deadline"


def test_sigterm_finishes_calls_in_flight_then_exits_zero(own_redis, golden_model_path):
    """`rta serve` as a process: on SIGTERM, calls already in flight are answered, then it exits 0."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import redis

    from loadtest.server_process import ServerProcess
    from rta.v1 import decision_pb2_grpc as pb_grpc
    from tests.conftest import TEST_POLICY

    make_live(redis.Redis.from_url(own_redis.url))  # a live (empty) export: the service gets ready
    server = ServerProcess(redis_url=own_redis.url, model_path=golden_model_path, policy_path=TEST_POLICY,
                           redis_timeout_ms=2000, shutdown_grace_s=5).start()
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.RtaServiceStub(channel)
            redis.Redis.from_url(own_redis.url).execute_command("CLIENT", "PAUSE", 600, "ALL")
            with ThreadPoolExecutor(4) as pool:
                calls = [pool.submit(stub.Decide, REQUEST, timeout=5) for _ in range(4)]
                time.sleep(0.2)  # the calls are now waiting on the paused Redis
                server.proc.send_signal(signal.SIGTERM)
                answers = [c.result() for c in calls]
            assert all(a.request_id == "d" and not a.internal.degraded for a in answers)
            assert server.proc.wait(10) == 0
    finally:
        server.stop()


def test_model_failure_answers_the_fallbacks(service, tmp_path):
    from tests import golden_model

    broken = tmp_path / "breaks-on-one-row.onnx"
    golden_model.build(broken, only_pairs=True)
    svc = service(model_path=broken)
    svc.put_profile(pb.OAID, OAID, profile_pb2.Profile(one_id="p"))
    resp = _decide(svc)
    assert resp.internal.degraded and resp.internal.reasons[0] == pb.MODEL_ERROR
    assert {r.strategy_id: r.decision for r in resp.results} == {"acq_new": pb.BID, "winback_lapsed": pb.NO_BID}
    assert svc.stub.Decide(pb.DecideRequest(request_id="p", is_ping=True), timeout=1).internal.reasons == [pb.PING]
