"""Shared fixtures: a real redis-server started by the tests on a free port."""

from __future__ import annotations

import tempfile

import pytest
import redis

from rta_service.embedded_redis import EmbeddedRedis


@pytest.fixture(autouse=True)
def _temp_dirs_under_pytest(monkeypatch, tmp_path_factory):
    """Temporary directories go under pytest's base temp dir, which pytest prunes, not /tmp: a run without
    work_dir keeps its rejects in a temp dir on purpose (cdp.pipeline._keep_rejects)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.getbasetemp()))


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


@pytest.fixture(scope="module")
def spark():
    """A Spark backend for the module's engine-comparison tests (Spark starts slowly); tiny data: one
    shuffle partition, no code generation. The tests skip themselves when java is absent."""
    from cdp import engine

    session = engine.spark_session("local[2]", conf={"spark.sql.shuffle.partitions": "1",
                                                     "spark.sql.codegen.wholeStage": "false"})
    yield engine.connect("pyspark", session=session)
    session.stop()


@pytest.fixture(scope="session")
def golden_model_path(tmp_path_factory):
    from tests import golden_model

    path = tmp_path_factory.mktemp("model") / "golden.onnx"
    golden_model.build(path)
    return path


@pytest.fixture
def service(redis_url, golden_model_path, tmp_path):
    """Start the real gRPC server (port 0) against the test Redis; `service(**settings)` -> handle."""
    from tests.service_handle import ServiceHandle

    handles = []

    def start(**overrides):
        settings = dict(listen="127.0.0.1:0", admin_listen="127.0.0.1:0", redis_url=redis_url,
                        model_path=golden_model_path, policy_path=TEST_POLICY, redis_retry_after_ms=100,
                        generation_refresh_ms=100,
                        # Generous, so that a scheduling hiccup of this shared machine cannot turn a
                        # semantic test into a STORE_TIMEOUT; tests of timeouts set their own.
                        redis_timeout_ms=250)
        settings.update(overrides)
        handle = ServiceHandle(settings).start()
        handles.append(handle)
        return handle

    yield start
    for h in handles:
        h.stop()


TEST_POLICY = __import__("pathlib").Path(__file__).parent / "cases" / "policy.yaml"
