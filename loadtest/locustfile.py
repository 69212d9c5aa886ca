"""Locust load test of the decision service over gRPC, in the pattern of Locust's gRPC example: a
client interceptor reports every call to Locust's request event; gevent drives grpc.

    RTA_WORLD=./demo-output/world locust -f loadtest/locustfile.py --host 127.0.0.1:50051 \
        --headless -u 50 -r 10 -t 60s

RTA_WORLD is a world written by `rta simulate` (or kept by `rta demo --keep`); requests are drawn
from its ad traffic: mostly unknown devices, some known members, a few pings.
"""

from __future__ import annotations

import os
import random
import time

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, events, task
from locust.exception import LocustError

from loadtest.traffic import load_requests
from rta.v1 import decision_pb2_grpc as pb_grpc

grpc_gevent.init_gevent()  # grpc must cooperate with gevent, not block it

_REQUESTS: list = []


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--rta-world", default=os.environ.get("RTA_WORLD", ""), help="simulated world directory")
    parser.add_argument("--rta-requests", type=int, default=20000, help="distinct requests to draw")
    parser.add_argument("--rta-deadline-ms", type=float, default=60.0, help="gRPC deadline per call")


@events.test_start.add_listener
def _load(environment, **_kwargs):
    opts = environment.parsed_options
    if not opts.rta_world:
        raise LocustError("set RTA_WORLD or --rta-world to a world written by `rta simulate`")
    _REQUESTS[:] = load_requests(opts.rta_world, opts.rta_requests)[0]


class _LocustInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Reports each unary call to Locust (name, time, size, failure)."""

    def __init__(self, environment):
        self.env = environment

    def intercept_unary_unary(self, continuation, client_call_details, request):
        start = time.perf_counter()
        response, exception, length = None, None, 0
        try:
            call = continuation(client_call_details, request)
            response = call.result()
            length = response.ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.env.events.request.fire(request_type="grpc", name=client_call_details.method,
                                     response_time=(time.perf_counter() - start) * 1000,
                                     response_length=length, response=response, context=None,
                                     exception=exception)
        return call  # the stub raises the error, if any, to the task


class GrpcUser(User):
    abstract = True
    stub_class = None

    def __init__(self, environment):
        super().__init__(environment)
        if not self.host:
            raise LocustError("give --host host:port of the decision service")
        channel = grpc.insecure_channel(self.host)
        self.stub = self.stub_class(grpc.intercept_channel(channel, _LocustInterceptor(environment)))


class RtaPlatformUser(GrpcUser):
    """An ad platform asking about one ad opportunity after another (no think time)."""

    stub_class = pb_grpc.RtaServiceStub

    @task
    def decide(self):
        request = random.choice(_REQUESTS)
        timeout = self.environment.parsed_options.rta_deadline_ms / 1000
        try:
            self.stub.Decide(request, timeout=timeout)
        except grpc.RpcError:
            pass  # already reported as a failure by the interceptor
