"""Shared fixtures: a real redis-server started by the tests on a free port."""

from __future__ import annotations

import pytest
import redis

from rta_service.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server():
    server = EmbeddedRedis().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server) -> str:
    """A clean database on the session's redis-server."""
    if redis_server.proc is None:  # a test stopped it; bring it back for the next one
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url
