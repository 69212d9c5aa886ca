"""The service's lock-free metrics expose exactly what prometheus_client's own classes would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from rta.v1 import decision_pb2 as pb
from rta_service.metrics import LATENCY_BUCKETS, Metrics


def _lines(registry: CollectorRegistry, prefix: str) -> list[str]:
    return sorted(line for line in generate_latest(registry).decode().splitlines()
                  if line.startswith(prefix) and "_created" not in line)


def test_histogram_and_counters_match_prometheus_client():
    rng = random.Random(3)
    values = [rng.choice(LATENCY_BUCKETS) for _ in range(50)] + [rng.uniform(0, 0.3) for _ in range(500)] + [9.0]
    ours = Metrics(CollectorRegistry())
    ref_registry = CollectorRegistry()
    ref = Histogram("rta_request_seconds", "x", buckets=LATENCY_BUCKETS, registry=ref_registry)
    ref_decisions = Counter("rta_decisions", "x", ["decision", "reason", "model_version"], registry=ref_registry)
    for v in values:  # values on a bucket's bound land in that bucket (le is inclusive)
        ours.request_latency.observe(v)
        ref.observe(v)
    for decision, reason in [(pb.BID, pb.SCORED)] * 3 + [(pb.NO_BID, pb.BELOW_THRESHOLD)]:
        ours.decision(decision, reason, "m1").inc()
        ref_decisions.labels(pb.Decision.Name(decision), pb.Reason.Name(reason), "m1").inc()
    for prefix in ("rta_request_seconds", "rta_decisions_total"):
        assert _lines(ours.registry, prefix) == _lines(ref_registry, prefix), prefix
    assert 'rta_request_seconds_bucket{le="+Inf"} 551.0' in _lines(ours.registry, "rta_request_seconds")


def test_gauges_and_labelled_counters_are_exposed():
    m = Metrics(CollectorRegistry())
    m.in_flight.inc()
    m.in_flight.inc()
    m.in_flight.dec()
    m.store_generation.set(7)
    m.strategy_result("acq_new", pb.BID, pb.SCORED).inc()
    m.ignored_id(pb.MALFORMED_ID).inc(2)
    m.stages["store"].observe(0.0003)
    text = generate_latest(m.registry).decode()
    assert "rta_in_flight 1.0" in text
    assert "rta_store_generation 7.0" in text
    assert 'rta_strategy_results_total{decision="BID",reason="SCORED",strategy="acq_new"} 1.0' in text
    assert 'rta_ignored_ids_total{reason="MALFORMED_ID"} 2.0' in text
    assert 'rta_stage_seconds_bucket{le="0.0005",stage="store"} 1.0' in text
    assert 'rta_stage_seconds_bucket{le="0.00025",stage="store"} 0.0' in text
