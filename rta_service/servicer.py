"""gRPC servicer: proto in, proto out. Validates, hands the call to the micro-batcher with the
caller's deadline, and maps failures to status codes in this one place:
INVALID_ARGUMENT (the caller's fault, with a message), INTERNAL (a bug, fixed message).
RESOURCE_EXHAUSTED past `max_in_flight` comes from the server itself (server.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from rta.v1 import decision_pb2 as pb
from rta.v1 import decision_pb2_grpc as pb_grpc

from . import metrics as m
from .core import Limits, MicroBatcher, validate

log = logging.getLogger(__name__)


class RtaServicer(pb_grpc.RtaServiceServicer):
    def __init__(self, batcher: MicroBatcher, limits: Limits, default_deadline_s: float, metrics=None):
        self.batcher = batcher
        self.limits = limits
        self.default_deadline_s = default_deadline_s
        self.metrics = metrics
        self._rpcs = 0  # Decide calls in the server, from their start to the end of their response

    def _rpc_done(self, _task) -> None:
        self._rpcs -= 1

    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        t0 = time.perf_counter()
        problem = validate(request, self.limits)
        if problem:
            if self.metrics:
                self.metrics.invalid_requests.inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        others = self._rpcs
        self._rpcs += 1
        asyncio.current_task().add_done_callback(self._rpc_done)  # the task ends after the response is sent
        remaining = context.time_remaining()
        deadline = time.monotonic() + (self.default_deadline_s if remaining is None else remaining)
        if self.metrics:
            self.metrics.in_flight.inc()
        try:
            resp = await self.batcher.decide(request, deadline, others)
        except Exception:
            log.exception("Decide failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if self.metrics:
                self.metrics.in_flight.dec()
        elapsed = time.perf_counter() - t0
        resp.processing_time_us = int(elapsed * 1e6)
        m.observe_response(self.metrics, resp, elapsed)
        return resp

    async def Echo(self, request: pb.EchoRequest, context) -> pb.EchoResponse:
        return pb.EchoResponse(payload=request.payload)
