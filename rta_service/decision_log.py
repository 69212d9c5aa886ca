"""The decision log: every decision, written to a Redis Stream off the request path
(docs/specs/decision-log.md is the record format; this module is its one implementation).

On the request path DecisionCore calls `DecisionLog.record(now, requests, responses, work)` once per
micro-batch: it appends one tuple to an in-memory list, or, when `capacity` records are already
waiting, drops the batch and counts it (`rta_decision_log_dropped_total{reason="buffer_full"}`).
Nothing else happens there: no encoding, no I/O, no lock.

A background task wakes every `flush_s`, encodes what is buffered and writes it as stream entries of
up to `batch` records each (`XADD {ns}:decisions MAXLEN ~ {maxlen} * n <count> v <json array>`) on
its own Redis connection: one entry per chunk, not per record, because per-record XADDs cost the
event loop more than encoding does. A failed write drops those records and counts them (reason
`redis_error`), so a Redis outage costs log records, never decisions, and memory stays bounded by
`capacity`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
RECORD_VERSION = 1
FIELD = "v"  # the records of a stream entry: a JSON array of records
COUNT_FIELD = "n"  # how many records the entry holds
CLUSTER_SCHEME = "redis+cluster://"
WRITE_TIMEOUT_S = 5.0


class BadLogRecord(ValueError):
    """A stream entry that is not a decision record of a supported version."""


def stream_key(ns: str) -> str:
    return f"{ns}:decisions"


def encode(ts: float, request, response, ids, features) -> dict:
    """One record (docs/specs/decision-log.md) as a JSON-ready dict. `ids` are the request's usable
    normalised IDs (ids.NormalizedId, hashed), `features` the model's input row or None."""
    internal = response.internal
    score = internal.score
    return {
        "v": RECORD_VERSION,
        "ts": round(ts, 3),
        "request_id": request.request_id,
        "platform": request.platform,
        "os": request.os,
        "is_test": request.is_test,
        "decision": response.decision,
        "reasons": list(internal.reasons),
        "ids": [[i.id_type, i.value] for i in ids] if ids else [],
        "matched_id_type": internal.matched_id_type,
        "matched_id": internal.matched_id,
        "one_id": internal.one_id,
        "known": internal.known,
        "degraded": internal.degraded,
        "score": score if score == score else None,  # NaN (not scored) -> null
        "experiment_bucket": internal.experiment_bucket,
        "holdout": internal.holdout,
        "model_version": internal.model_version,
        "results": [[r.strategy_id, r.decision, r.reason, round(r.weight_factor, 4)] for r in response.results],
        "features": [v if v == v else None for v in features] if features is not None else None,
    }


REQUIRED = {"v": int, "ts": (int, float), "request_id": str, "decision": int, "model_version": str}


def decode(rec) -> dict:
    """One record (a parsed JSON value) checked; raises BadLogRecord when it is not one."""
    if not isinstance(rec, dict):
        raise BadLogRecord("not a JSON object")
    for name, kind in REQUIRED.items():
        if not isinstance(rec.get(name), kind):
            raise BadLogRecord(f"field {name!r} missing or of the wrong type")
    if not 1 <= rec["v"] <= RECORD_VERSION:
        raise BadLogRecord(f"unsupported record version {rec['v']}")
    return rec


def decode_entry(raw: bytes | str | None) -> list:
    """The records of a stream entry's `v` field, each still to be checked with decode();
    raises BadLogRecord when the field is not a JSON array."""
    try:
        records = json.loads(raw)
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise BadLogRecord(f"not JSON: {exc}") from None
    if not isinstance(records, list):
        raise BadLogRecord("not a JSON array of records")
    return records


def encode_entry(records: list[dict]) -> bytes:
    return json.dumps(records, separators=(",", ":")).encode()


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

    def _take(self) -> list[dict]:
        """Encode up to `batch` buffered records (whole micro-batches) and remove them from the buffer."""
        out: list[dict] = []
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
