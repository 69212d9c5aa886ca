"""The decision log: every decision, written to a Redis Stream off the request path
(docs/specs/decision-log.md is the record format; this module is its one implementation).

On the request path DecisionCore calls `DecisionLog.record(now, requests, responses, work)` once per
micro-batch: it appends one tuple to an in-memory list, or, when `capacity` records are already
waiting, drops the batch and counts it (`rta_decision_log_dropped_total{reason="buffer_full"}`).
Nothing else happens there: no encoding, no I/O, no lock.

A background task wakes every `flush_s`, encodes what is buffered and writes it as stream entries of
up to `batch` records each (`XADD {ns}:decisions MAXLEN ~ {maxlen} * n <count> b <DecisionBatch>`) on
its own Redis connection: one entry per chunk, not per record, and protobuf rather than JSON,
because the writer shares the event loop with the decisions (the spec has the measured costs).
A failed write drops those records and counts them (reason `redis_error`), so a Redis outage costs
log records, never decisions, and memory stays bounded by `capacity`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from rta.v1 import decision_log_pb2 as dlpb

log = logging.getLogger(__name__)
RECORD_VERSION = 1
FIELD = "b"  # the records of a stream entry: a serialized rta.v1.DecisionBatch
COUNT_FIELD = "n"  # how many records the entry holds
CLUSTER_SCHEME = "redis+cluster://"
WRITE_TIMEOUT_S = 5.0


class BadLogRecord(ValueError):
    """A stream entry or record that is not a decision record of a supported version."""


def stream_key(ns: str) -> str:
    return f"{ns}:decisions"


def encode(ts: float, request, response, ids, features) -> dlpb.DecisionRecord:
    """One record (docs/specs/decision-log.md). `ids` are the request's usable normalised IDs
    (ids.NormalizedId, hashed), `features` the model's input row or None."""
    return dlpb.DecisionRecord(ts=ts, platform=request.platform, os=request.os, is_test=request.is_test,
                               ids=[f"{i.id_type}:{i.value}" for i in ids] if ids else (),
                               features=features or (), response=response)


def encode_entry(records) -> bytes:
    return dlpb.DecisionBatch(version=RECORD_VERSION, records=records).SerializeToString()


def decode_entry(raw: bytes | None) -> list[dlpb.DecisionRecord]:
    """The records of a stream entry's `b` field; raises BadLogRecord when it is not a batch we read."""
    batch = dlpb.DecisionBatch()
    try:
        batch.ParseFromString(raw)
    except Exception as exc:  # protobuf's DecodeError, or a TypeError for a missing field
        raise BadLogRecord(f"not a DecisionBatch: {exc}") from None
    if not 1 <= batch.version <= RECORD_VERSION:
        raise BadLogRecord(f"unsupported record version {batch.version}")
    return list(batch.records)


def to_dict(rec: dlpb.DecisionRecord) -> dict:
    """A record as the flat fields of docs/specs/decision-log.md (NaN -> None); raises BadLogRecord when
    it lacks what every record has."""
    resp = rec.response
    internal = resp.internal
    if not resp.request_id or not rec.ts > 0 or not internal.model_version:
        raise BadLogRecord("record without request_id, ts or model_version")
    score = internal.score
    return {
        "ts": rec.ts, "request_id": resp.request_id, "platform": rec.platform, "os": rec.os,
        "is_test": rec.is_test, "decision": resp.decision, "reasons": list(internal.reasons), "ids": list(rec.ids),
        "matched_id_type": internal.matched_id_type, "matched_id": internal.matched_id, "one_id": internal.one_id,
        "known": internal.known, "degraded": internal.degraded, "score": score if score == score else None,
        "experiment_bucket": internal.experiment_bucket, "holdout": internal.holdout,
        "model_version": internal.model_version,
        "strategy_ids": [r.strategy_id for r in resp.results], "strategy_decisions": [r.decision for r in resp.results],
        "strategy_reasons": [r.reason for r in resp.results],
        "weight_factors": [r.weight_factor for r in resp.results],
        "features": [v if v == v else None for v in rec.features] if len(rec.features) else None,
    }


def make_client(url: str):
    """The log's own connection (never the request path's)."""
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME):], socket_timeout=2.0)
    return aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)


class DecisionLog:
    def __init__(self, url: str, ns: str, *, capacity: int = 50_000, batch: int = 500, flush_s: float = 0.05,
                 maxlen: int = 100_000, metrics=None):
        self.url = url
        self.key = stream_key(ns)
        self.capacity = capacity
        self.batch = batch
        self.flush_s = flush_s
        self.maxlen = maxlen
        self.metrics = metrics
        self._buf: collections.deque[tuple] = collections.deque()  # (now, requests, responses, work) per micro-batch
        self._buffered = 0  # records (responses) in _buf
        self._task: asyncio.Task | None = None
        self._client = None
        self._last_warned = -math.inf
        self._inflight = 0  # records of the write under way
        self.written = 0
        self.dropped = 0

    # -- request path ---------------------------------------------------------------------------
    def record(self, now: float, requests, responses, work) -> None:
        """Keep a micro-batch for the writer, or drop and count it when the buffer is full."""
        n = len(responses)
        if self._buffered + n > self.capacity:
            self._drop(n, "buffer_full")
            return
        self._buf.append((now, requests, responses, work))
        self._buffered += n

    # -- background -----------------------------------------------------------------------------
    def _drop(self, n: int, reason: str) -> None:
        self.dropped += n
        if self.metrics:
            self.metrics.log_dropped.labels(reason=reason).inc(n)

    def _take(self) -> list:
        """Encode up to `batch` buffered records (whole micro-batches) and remove them from the buffer."""
        out: list = []
        while self._buf and len(out) < self.batch:
            now, requests, responses, work = self._buf.popleft()
            self._buffered -= len(responses)
            by_index = {w.index: w for w in work}
            for i, (req, resp) in enumerate(zip(requests, responses, strict=True)):
                if resp is None or req.is_ping:
                    continue
                w = by_index.get(i)
                out.append(encode(now, req, resp, w.ids if w else None, w.x if w else None))
        return out

    async def flush_once(self) -> int:
        """Write what is buffered now; returns records written."""
        total = 0
        while self._buf:
            records = self._take()
            if not records:
                continue
            self._inflight = len(records)
            try:
                await self._client.xadd(self.key, {COUNT_FIELD: len(records), FIELD: encode_entry(records)},
                                        maxlen=self.maxlen, approximate=True)
            except (RedisError, OSError, TimeoutError) as exc:
                self._drop(len(records), "redis_error")
                now = time.monotonic()
                if now - self._last_warned >= 10.0:
                    self._last_warned = now
                    log.warning("decision log: cannot write to redis (%s); dropping records", exc)
                self._inflight = 0
                return total
            self._inflight = 0
            total += len(records)
            self.written += len(records)
            if self.metrics:
                self.metrics.log_written.inc(len(records))
        return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            if self.metrics:
                self.metrics.log_buffered.set(self._buffered)
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await self.flush_once()
            except TimeoutError:
                self._drop(self._inflight, "redis_error")
                self._inflight = 0
                log.warning("decision log: a write took over %.0f s; it was abandoned", WRITE_TIMEOUT_S)
            except Exception:  # a bug in encoding must not kill the writer; say so and go on
                log.exception("decision log writer failed")
                self._drop(self._buffered, "writer_error")
                self._buf.clear()
                self._buffered = 0

    def start(self) -> None:
        self._client = make_client(self.url)
        self._task = asyncio.create_task(self._run(), name="decision-log")

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stop the writer after a last flush of what is buffered (bounded by timeout_s)."""
        if self._task:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=timeout_s)  # redis-py may hold a cancelled write back
        if self._client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await self.flush_once()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await self._client.aclose()
        if self._buffered:
            log.warning("decision log: %d records not written at shutdown", self._buffered)
            self._drop(self._buffered, "shutdown")
            self._buf.clear()
            self._buffered = 0
