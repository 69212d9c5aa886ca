"""Stage 2: the only module that talks to Redis on the request path.

One MGET per micro-batch for every ID of every request in it (on a Cluster, redis-py's
mget_nonatomic: one round trip per node, in parallel). Timeouts come from the callers' deadlines;
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
        self.generation = 0
        self.up = False
        self._down_until = 0.0
        self._task: asyncio.Task | None = None

    # -- request path ---------------------------------------------------------------------------
    def keys_for(self, ids) -> list[str]:
        """Keys of normalised IDs (ids.NormalizedId) in the live generation."""
        return [keyspace.device_key(self.ns, self.generation, i.id_type, i.value) for i in ids]

    async def mget(self, keys: list[str], timeout_s: float) -> list[bytes | None]:
        if not keys:
            return []
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(pb.STORE_ERROR, "redis marked down")
        if self.generation == 0:  # no export is live: "not found" would wrongly mean "unknown device"
            raise StoreUnavailable(pb.NO_PROFILES, "no profile export in redis")
        try:
            async with asyncio.timeout(timeout_s):
                if self.cluster:
                    return await self.client.mget_nonatomic(keys)
                return await self.client.execute("MGET", *keys)
        except TimeoutError:
            raise StoreUnavailable(pb.STORE_TIMEOUT) from None
        except (RespError, RedisError, OSError) as exc:
            self._mark_down()
            raise StoreUnavailable(pb.STORE_ERROR, str(exc)) from None

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
            generation = keyspace.parse_generation(raw)
        except (TimeoutError, RespError, RedisError, OSError, ValueError) as exc:
            if self.up:
                log.warning("redis check failed: %s", exc or type(exc).__name__)
            self._set_up(False)
            return False
        if generation != self.generation:
            if generation == 0:
                log.warning("redis holds no profile export (%s absent): answering fallbacks until the CDP "
                            "exports again", keyspace.generation_key(self.ns))
            else:
                log.info("profile keyspace generation %d -> %d", self.generation, generation)
            self.generation = generation
            if self.metrics:
                self.metrics.store_generation.set(generation)
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
