"""Runs the real asyncio gRPC server in a background thread so that tests can use a plain blocking
client. No mocks: the server, Redis and the model are the production ones."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import redis

from rta.v1 import decision_pb2_grpc as pb_grpc
from rta.v1 import profile_pb2
from rta_service import keyspace
from rta_service.server import create_server
from rta_service.settings import load_settings


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


TEST_BUCKET_BITS = 4  # 16 buckets: the IDs of one request usually land in several


def put_record(r, ns: str, id_type: int, md5hex: str, profile: profile_pb2.Profile | bytes, generation: int = 1,
               bucket_bits: int = TEST_BUCKET_BITS) -> None:
    """One device entry in the keyspace format, and its generation made live."""
    live = keyspace.Live(generation, bucket_bits)
    raw = profile if isinstance(profile, bytes) else keyspace.encode_profile(profile)
    r.hset(*keyspace.locate(ns, live, id_type, md5hex), raw)
    r.set(keyspace.generation_key(ns), keyspace.pointer_value(generation, bucket_bits))


def make_live(r, ns: str = "rta", generation: int = 1, bucket_bits: int = TEST_BUCKET_BITS) -> None:
    """An export is live, even if it holds no entries."""
    r.set(keyspace.generation_key(ns), keyspace.pointer_value(generation, bucket_bits))


def read_profiles(url: str, ns: str, ids) -> list[profile_pb2.Profile | None]:
    """What the decision service reads for (id_type, md5) pairs: the service's own store, one lookup."""
    from rta_service.ids import NormalizedId  # noqa: PLC0415
    from rta_service.store import ProfileStore  # noqa: PLC0415

    async def lookup():
        store = ProfileStore(url, ns)
        try:
            assert await store.refresh(), "redis did not answer"
            return await store.lookup([NormalizedId(t, m, i) for i, (t, m) in enumerate(ids)], timeout_s=10)
        finally:
            await store.close()

    return [None if raw is None else keyspace.decode_profile(raw) for raw in asyncio.run(lookup())]


class ServiceHandle:
    def __init__(self, overrides: dict):
        self.settings = load_settings(**overrides)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.channel = None

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServiceHandle:
        self.thread.start()

        async def _start():
            self.server = create_server(self.settings)
            return await self.server.start()

        self.port = self._call(_start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.RtaServiceStub(self.channel)
        return self

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.redis_url)

    def put_profile(self, id_type: int, md5hex: str, profile: profile_pb2.Profile | bytes, generation: int = 1) -> None:
        """Write one record (or raw bytes) the way the CDP exporter does, and make its generation live."""
        put_record(self.redis, self.settings.redis_namespace, id_type, md5hex, profile, generation)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the live generation now instead of waiting for the background refresh."""
        self._call(self.server.deps.store.refresh())

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        if self.channel:
            self.channel.close()
        if self.server:
            self._call(self.server.stop(grace=0, drain=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
