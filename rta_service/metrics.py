"""All Prometheus metrics of the service, in one place. Labels are low-cardinality enums only: never
a device ID, request ID or strategy set. Exposed on the admin port (`admin_listen`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rta.v1 import decision_pb2 as pb

# Sub-millisecond resolution where the request path lives (seconds).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
                   0.01, 0.016, 0.025, 0.05, 0.1, 0.25)
STAGES = ("ids", "store", "features", "model", "policy", "batch")  # store includes decoding the records


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter("rta_decisions", "Answers by decision and main reason",
                                 ["decision", "reason", "model_version"], registry=r)
        self.strategy_results = Counter("rta_strategy_results", "Per-strategy results",
                                        ["strategy", "decision", "reason"], registry=r)
        self.request_latency = Histogram("rta_request_seconds", "Time inside the service per Decide call",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("rta_stage_seconds", "Time per stage per micro-batch", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rta_batch_size", "Requests decided together",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.ignored_ids = Counter("rta_ignored_ids", "Device IDs ignored", ["reason"], registry=r)
        self.invalid_requests = Counter("rta_invalid_requests", "Requests refused with INVALID_ARGUMENT",
                                        registry=r)
        self.store_up = Gauge("rta_store_up", "1 while Redis answers", registry=r)
        self.store_generation = Gauge("rta_store_generation", "Live profile keyspace generation", registry=r)
        self.in_flight = Gauge("rta_in_flight", "Decide calls being served", registry=r)
        self.log_written = Counter("rta_decision_log_written", "Decision records written to the Redis Stream",
                                   registry=r)
        self.log_dropped = Counter("rta_decision_log_dropped", "Decision records dropped: the buffer was full "
                                   "(buffer_full) or Redis refused the write (redis_error)", ["reason"], registry=r)
        self.log_buffered = Gauge("rta_decision_log_buffered", "Decision records waiting to be written", registry=r)
        self.model_info = Gauge("rta_model_info", "1 for the model version serving now", ["model_version"],
                                registry=r)
        self.model_reloads = Counter("rta_model_reloads", "Promoted models loaded (ok) or refused (refused)",
                                     ["result"], registry=r)
        self.stages = {s: self.stage_latency.labels(stage=s) for s in STAGES}
        self._children: dict[tuple, object] = {}  # labels() costs microseconds; cache the children

    def strategy_result(self, strategy: str, decision: int, reason: int):
        key = ("s", strategy, decision, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.strategy_results.labels(
                strategy=strategy, decision=pb.Decision.Name(decision), reason=pb.Reason.Name(reason))
        return child

    def decision(self, decision: int, reason: int, model_version: str):
        key = ("d", decision, reason, model_version)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(
                decision=pb.Decision.Name(decision), reason=pb.Reason.Name(reason), model_version=model_version)
        return child

    def ignored_id(self, reason: int):
        key = ("i", reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.ignored_ids.labels(reason=pb.Reason.Name(reason))
        return child

    def serve(self, listen: str):
        """Start the /metrics endpoint in a thread; returns the bound port (listen may use port 0)."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if getattr(self, "_http", None):
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def observe_response(metrics: Metrics | None, resp, seconds: float) -> None:
    """Count one answer by decision and main reason, and its time inside the service."""
    if metrics is None:
        return
    reasons = resp.internal.reasons
    metrics.decision(resp.decision, reasons[0] if reasons else 0, resp.internal.model_version).inc()
    metrics.request_latency.observe(seconds)
