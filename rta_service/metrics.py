"""All Prometheus metrics of the service, in one place. Labels are low-cardinality enums only: never
a device ID, request ID or strategy set. Exposed on the admin port (`admin_listen`).

The request path updates a dozen metrics per call, and prometheus_client's Counter and Histogram take
a lock and several calls per update (~2-5 us each on this project's machines, ~40 us per Decide).
So the request path's metrics are plain Python numbers here, updated by the event-loop thread only,
and turned into Prometheus families when /metrics is scraped (`_Collector`). A scrape may see a
histogram's sum one observation ahead of its buckets; nothing is lost."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from rta.v1 import decision_pb2 as pb

# Sub-millisecond resolution where the request path lives (seconds).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
                   0.01, 0.016, 0.025, 0.05, 0.1, 0.25)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("ids", "store", "features", "model", "policy", "batch")  # store includes decoding the records


class Value:
    """A counter or gauge: inc/dec/set with no lock (one writer thread, the event loop)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Histogram:
    """Fixed upper bounds; counts per bucket (not cumulative) plus +Inf, and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket i holds bounds[i-1] < v <= bounds[i]
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((floatToGoString(bound), total))
        return out


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.request_latency = Histogram(LATENCY_BUCKETS)
        self.stages = {s: Histogram(LATENCY_BUCKETS) for s in STAGES}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.invalid_requests = Value()
        self.store_up = Value()
        self.store_generation = Value()
        self.in_flight = Value()
        self._decisions: dict[tuple[int, int, str], Value] = {}
        self._strategy_results: dict[tuple[str, int, int], Value] = {}
        self._ignored_ids: dict[int, Value] = {}
        self.registry.register(_Collector(self))
        self._http = None
        # Off the request path (the decision-log writer, the model watcher): prometheus_client's own classes.
        r = self.registry
        self.log_written = Counter("rta_decision_log_written", "Decision records written to the Redis Stream",
                                   registry=r)
        self.log_dropped = Counter("rta_decision_log_dropped", "Decision records dropped: the buffer was full "
                                   "(buffer_full), Redis refused the write (redis_error), or not written at "
                                   "shutdown (shutdown)", ["reason"], registry=r)
        self.log_buffered = Gauge("rta_decision_log_buffered", "Decision records waiting to be written", registry=r)
        self.model_info = Gauge("rta_model_info", "1 for the model version serving now", ["model_version"],
                                registry=r)
        self.model_reloads = Counter("rta_model_reloads", "Promoted models loaded (ok) or refused (refused)",
                                     ["result"], registry=r)

    def decision(self, decision: int, reason: int, model_version: str) -> Value:
        key = (decision, reason, model_version)
        v = self._decisions.get(key)
        if v is None:
            v = self._decisions[key] = Value()
        return v

    def strategy_result(self, strategy: str, decision: int, reason: int) -> Value:
        key = (strategy, decision, reason)
        v = self._strategy_results.get(key)
        if v is None:
            v = self._strategy_results[key] = Value()
        return v

    def ignored_id(self, reason: int) -> Value:
        v = self._ignored_ids.get(reason)
        if v is None:
            v = self._ignored_ids[reason] = Value()
        return v

    def serve(self, listen: str):
        """Start the /metrics endpoint in a thread; returns the bound port (listen may use port 0)."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _Collector:
    """Turns the plain numbers above into Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def describe(self):
        return []  # names are only known from collect(); an empty describe skips a duplicate check

    def collect(self):
        m = self.m
        dec, rsn = pb.Decision.Name, pb.Reason.Name
        f = CounterMetricFamily("rta_decisions", "Answers by decision and main reason",
                                labels=["decision", "reason", "model_version"])
        for (d, r, version), v in list(m._decisions.items()):
            f.add_metric([dec(d), rsn(r), version], v.value)
        yield f
        f = CounterMetricFamily("rta_strategy_results", "Per-strategy results",
                                labels=["strategy", "decision", "reason"])
        for (s, d, r), v in list(m._strategy_results.items()):
            f.add_metric([s, dec(d), rsn(r)], v.value)
        yield f
        f = CounterMetricFamily("rta_ignored_ids", "Device IDs ignored", labels=["reason"])
        for r, v in list(m._ignored_ids.items()):
            f.add_metric([rsn(r)], v.value)
        yield f
        yield CounterMetricFamily("rta_invalid_requests", "Requests refused with INVALID_ARGUMENT",
                                  value=m.invalid_requests.value)
        yield _histogram("rta_request_seconds", "Time inside the service per Decide call", m.request_latency)
        f = HistogramMetricFamily("rta_stage_seconds", "Time per stage per micro-batch", labels=["stage"])
        for stage, h in m.stages.items():
            f.add_metric([stage], h.cumulative(), h.sum)
        yield f
        yield _histogram("rta_batch_size", "Requests decided together", m.batch_size)
        yield GaugeMetricFamily("rta_store_up", "1 while Redis answers", value=m.store_up.value)
        yield GaugeMetricFamily("rta_store_generation", "Live profile keyspace generation",
                                value=m.store_generation.value)
        yield GaugeMetricFamily("rta_in_flight", "Decide calls being served", value=m.in_flight.value)


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    f = HistogramMetricFamily(name, doc)
    f.add_metric([], h.cumulative(), h.sum)
    return f


def observe_response(metrics: Metrics | None, resp, seconds: float) -> None:
    """Count one answer by decision and main reason, and its time inside the service."""
    if metrics is None:
        return
    reasons = resp.internal.reasons
    metrics.decision(resp.decision, reasons[0] if reasons else 0, resp.internal.model_version).inc()
    metrics.request_latency.observe(seconds)
