"""A closed-loop load generator over grpcio's blocking channel: `concurrency` calls in flight, each
completion issuing the next. Used by the demo and `rta bench`. (grpcio's future API is markedly
cheaper per call than its asyncio client, so the generator is less of a bottleneck.)"""

from __future__ import annotations

import threading
import time

import grpc


def closed_loop(method, requests: list, n: int, concurrency: int, timeout_s: float) -> list[tuple[object, float]]:
    """Call `method` (a unary-unary multicallable) n times cycling through `requests`; returns
    [(response or grpc.StatusCode, seconds)] in issue order."""
    out: list = [None] * n
    slots = threading.Semaphore(concurrency)

    def issue(i: int) -> None:
        t0 = time.perf_counter()
        future = method.future(requests[i % len(requests)], timeout=timeout_s)

        def done(f, i=i, t0=t0):
            elapsed = time.perf_counter() - t0
            try:
                out[i] = (f.result(), elapsed)
            except grpc.RpcError as exc:
                out[i] = (exc.code(), elapsed)
            slots.release()

        future.add_done_callback(done)

    for i in range(n):
        slots.acquire()
        issue(i)
    for _ in range(concurrency):  # wait for the last calls
        slots.acquire()
    return out


def sequential(method, requests: list, n: int, timeout_s: float) -> list[tuple[object, float]]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        try:
            resp = method(requests[i % len(requests)], timeout=timeout_s)
        except grpc.RpcError as exc:
            resp = exc.code()
        out.append((resp, time.perf_counter() - t0))
    return out
