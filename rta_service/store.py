"""Stage 2: the only module that talks to Redis on the request path.

One round trip per micro-batch for every ID of every request in it: one HMGET per bucket hash
(docs/specs/profile-store.md), all written at once on the pipelined connection (on a Cluster, a
redis-py pipeline: one round trip per node, in parallel). Timeouts come from the callers' deadlines;
there are no client retries. After a connection failure the store is marked down for
`retry_after_s`, answering at once with StoreUnavailable so fallbacks cost nothing while Redis is
away; a background loop pings it back to life and re-reads the live keyspace generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rta.v1 import decision_pb2 as pb

from . import keyspace
from .resp import RespClient, RespError

log = logging.getLogger(__name__)
CLUSTER_SCHEME = "redis+cluster://"


class StoreUnavailable(Exception):
    def __init__(self, reason: int, detail: str = ""):
        super().__init__(detail or pb.Reason.Name(reason))
        self.reason = reason


def make_client(url: str, pool_size: int, connect_timeout_s: float):
    """RespClient (one pipelined connection) for a single Redis; redis-py for a Cluster."""
    if url.startswith(CLUSTER_SCHEME):
        return RedisCluster.from_url("redis://" + url[len(CLUSTER_SCHEME):], socket_connect_timeout=connect_timeout_s,
                                     retry=Retry(NoBackoff(), 0), max_connections=pool_size)
    return RespClient(url, connect_timeout_s)


class ProfileStore:
    def __init__(self, url: str, namespace: str, *, pool_size: int = 32, connect_timeout_s: float = 0.2,
                 retry_after_s: float = 0.25, refresh_s: float = 1.0, metrics=None):
        self.url = url
        self.ns = namespace
        self.client = make_client(url, pool_size, connect_timeout_s)
        self.cluster = isinstance(self.client, RedisCluster)
        self.retry_after_s = retry_after_s
        self.refresh_s = refresh_s
        self.metrics = metrics
        self.live = keyspace.NOTHING
        self.up = False
        self._down_until = 0.0
        self._task: asyncio.Task | None = None

    @property
    def generation(self) -> int:
        return self.live.generation

    # -- request path ---------------------------------------------------------------------------
    async def lookup(self, ids, timeout_s: float) -> list[bytes | None]:
        """The stored record of each normalised ID (ids.NormalizedId) in the live export, None where absent."""
        if not ids:
            return []
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(pb.STORE_ERROR, "redis marked down")
        live = self.live
        if live.generation == 0 or live.bucket_bits is None:  # "not found" would wrongly mean "unknown device"
            raise StoreUnavailable(pb.NO_PROFILES, "no profile export in redis" if live.generation == 0 else
                                   "the live profile export is in format 1; re-export with this version")
        wanted = keyspace.group_by_bucket(self.ns, live, ids)
        try:
            async with asyncio.timeout(timeout_s):
                replies = await (self._cluster_pipeline(wanted) if self.cluster else
                                 self.client.execute_packed(keyspace.pack_hmgets(wanted), len(wanted)))
        except TimeoutError:
            raise StoreUnavailable(pb.STORE_TIMEOUT) from None
        except (RespError, RedisError, OSError) as exc:
            self._mark_down()
            raise StoreUnavailable(pb.STORE_ERROR, str(exc)) from None
        out: list[bytes | None] = [None] * len(ids)
        for fields, values in zip(wanted.values(), replies, strict=True):
            for (pos, _), value in zip(fields, values, strict=True):
                out[pos] = value
        return out

    async def _cluster_pipeline(self, wanted) -> list:
        pipe = self.client.pipeline()
        for key, fields in wanted.items():
            pipe.hmget(key, [f for _, f in fields])
        return await pipe.execute()

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self.retry_after_s
        if self.up:
            log.warning("redis unreachable; answering fallbacks until it is back")
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        self.up = up
        if self.metrics:
            self.metrics.store_up.set(1 if up else 0)

    # -- background -----------------------------------------------------------------------------
    async def refresh(self, timeout_s: float = 0.5) -> bool:
        """Ping and re-read the live generation; returns whether Redis answered."""
        try:
            async with asyncio.timeout(timeout_s):
                key = keyspace.generation_key(self.ns)
                raw = await (self.client.get(key) if self.cluster else self.client.execute("GET", key))
            live = keyspace.parse_pointer(raw)
        except (TimeoutError, RespError, RedisError, OSError, ValueError) as exc:
            if self.up:
                log.warning("redis check failed: %s", exc or type(exc).__name__)
            self._set_up(False)
            return False
        if live != self.live:
            if live.generation == 0:
                log.warning("redis holds no profile export (%s absent): answering fallbacks until the CDP "
                            "exports again", keyspace.generation_key(self.ns))
            elif live.bucket_bits is None:
                log.error("the live profile export (%s = %d) is in format 1, which this version does not read: "
                          "answering fallbacks until the CDP exports in format %d", keyspace.generation_key(self.ns),
                          live.generation, keyspace.FORMAT_VERSION)
            else:
                log.info("profile keyspace generation %d -> %d (%d bucket bits)", self.generation, live.generation,
                         live.bucket_bits)
            self.live = live
            if self.metrics:
                self.metrics.store_generation.set(live.generation)
        if not self.up:
            log.info("redis answers at %s", _redact(self.url))
        self._down_until = 0.0
        self._set_up(True)
        return True

    async def start(self) -> None:
        if not await self.refresh():
            log.warning("redis at %s does not answer yet; answering fallbacks until it does", _redact(self.url))
        elif self.generation == 0:
            log.warning("redis holds no profile export yet; answering fallbacks until the CDP exports")
        self._task = asyncio.create_task(self._watch(), name="store-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s if self.up else min(self.refresh_s, self.retry_after_s))
            await self.refresh()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _redact(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
