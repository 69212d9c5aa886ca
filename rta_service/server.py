"""Wires the stages into a gRPC server. `create_server(settings, deps)` is what tests and the demo use
(bind port 0 there); `serve(settings)` is the production entry point with SIGTERM handling."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from rta.v1 import decision_pb2 as pb
from rta.v1 import decision_pb2_grpc as pb_grpc

from .core import DecisionCore, Limits, MicroBatcher
from .decision_log import DecisionLog
from .ids import IdNormalizer
from .metrics import Metrics
from .model import OnnxModel
from .policy import Policy, load_policy
from .registry import ModelWatcher, current_model_path
from .servicer import RtaServicer
from .settings import Settings
from .store import ProfileStore

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RtaService"].full_name


@dataclass
class Deps:
    store: ProfileStore
    model: OnnxModel
    policy: Policy


def load_deps(settings: Settings, metrics: Metrics | None = None) -> Deps:
    """Everything that can be checked before serving; raises on a bad model or policy."""
    store = ProfileStore(settings.redis_url, settings.redis_namespace, pool_size=settings.redis_pool_size,
                         connect_timeout_s=settings.redis_connect_timeout_ms / 1000,
                         retry_after_s=settings.redis_retry_after_ms / 1000,
                         refresh_s=settings.generation_refresh_ms / 1000, metrics=metrics)
    model_path = current_model_path(settings.model_registry) if settings.model_registry else settings.model_path
    return Deps(store=store, model=OnnxModel.load(model_path), policy=load_policy(settings.policy_path))


class RtaServer:
    def __init__(self, settings: Settings, deps: Deps, metrics: Metrics):
        self.settings = settings
        self.deps = deps
        self.metrics = metrics
        normalizer = IdNormalizer(settings.id_precedence, settings.extra_doubtful_ids)
        self.decision_log = DecisionLog(
            settings.decision_log_url or settings.redis_url, settings.redis_namespace,
            capacity=settings.decision_log_buffer, batch=settings.decision_log_batch,
            flush_s=settings.decision_log_flush_ms / 1000, maxlen=settings.decision_log_maxlen,
            metrics=metrics) if settings.decision_log else None
        self.core = DecisionCore(deps.store, deps.model, deps.policy, normalizer, metrics=metrics,
                                 deadline_margin_s=settings.deadline_margin_ms / 1000,
                                 min_lookup_s=settings.min_lookup_ms / 1000,
                                 max_lookup_s=settings.redis_timeout_ms / 1000, decision_log=self.decision_log)
        self.model_watcher = ModelWatcher(settings.model_registry, self.core, settings.model_watch_ms / 1000,
                                          metrics) if settings.model_registry else None
        metrics.model_info.labels(model_version=deps.model.version).set(1)
        self.batcher = MicroBatcher(self.core, settings.max_batch, settings.batch_concurrency, metrics,
                                    window_s=settings.batch_window_us / 1e6)
        limits = Limits(max_device_ids=settings.max_device_ids, max_strategy_ids=settings.max_strategy_ids)
        self.servicer = RtaServicer(self.batcher, limits, settings.default_deadline_ms / 1000, metrics)
        self.health = health_aio.HealthServicer()
        self.grpc = grpc.aio.server(
            maximum_concurrent_rpcs=settings.max_in_flight,
            options=[("grpc.max_receive_message_length", settings.max_message_bytes),
                     ("grpc.max_send_message_length", settings.max_message_bytes)])
        pb_grpc.add_RtaServiceServicer_to_server(self.servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.grpc)
        self.port = 0
        self.admin_port = 0
        self._health_task: asyncio.Task | None = None

    async def start(self) -> int:
        await self._set_health(False)
        self.port = self.grpc.add_insecure_port(self.settings.listen)
        if self.settings.admin_listen:
            self.admin_port = self.metrics.serve(self.settings.admin_listen)
        await self.deps.store.start()
        if self.decision_log:
            self.decision_log.start()
        if self.model_watcher:
            self.model_watcher.start()
        await self.grpc.start()
        self._health_task = asyncio.create_task(self._follow_health(), name="health")
        log.info("serving %s on port %d (model %s, admin port %s)", SERVICE_NAME, self.port,
                 self.deps.model.version, self.admin_port or "off")
        return self.port

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _follow_health(self) -> None:
        """NOT_SERVING until the model is loaded (it is, once started) and Redis first answers with a live
        profile export; SERVING from then on, until shutdown. A Redis outage later does not flip it: every
        instance shares that Redis, and answering the fallbacks is the designed behaviour, whereas a
        readiness probe pulling all instances at once would turn it into a full outage. rta_store_up
        shows the Redis state."""
        store = self.deps.store
        while not (store.up and store.generation > 0):
            await asyncio.sleep(0.05)
        await self._set_health(True)

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Report NOT_SERVING, keep answering for `drain` seconds so balancers move away, then refuse new
        calls and give those in flight `grace` seconds."""
        await self._set_health(False)
        if self._health_task:
            self._health_task.cancel()
        drain = self.settings.shutdown_drain_s if drain is None else drain
        if drain > 0:
            await asyncio.sleep(drain)
        await self.grpc.stop(self.settings.shutdown_grace_s if grace is None else grace)
        if self.model_watcher:
            await self.model_watcher.close()
        if self.decision_log:
            await self.decision_log.close()
        await self.deps.store.close()
        self.metrics.close()


def create_server(settings: Settings, deps: Deps | None = None, metrics: Metrics | None = None) -> RtaServer:
    metrics = metrics or Metrics()
    if deps is None:
        deps = load_deps(settings, metrics)
    elif deps.store.metrics is None:
        deps.store.metrics = metrics
    return RtaServer(settings, deps, metrics)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop taking calls and finish those in flight."""
    server = create_server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (drain %.1fs, grace %.1fs)", settings.shutdown_drain_s, settings.shutdown_grace_s)
    await server.stop()
