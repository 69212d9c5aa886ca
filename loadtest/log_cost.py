"""What the decision log costs the service: server CPU per Decide call and calls/s, with the log on
and off, alternating in one run (the machine is shared and noisy; compare within a run).

    python -m loadtest.log_cost [--people 2000] [--calls 6000] [--repeats 2]

Needs the offline extra (it builds a small world, profiles and model as `rta bench` does) and psutil
(installed with locust).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import grpc
import psutil

from loadtest.client import closed_loop
from loadtest.server_process import ServerProcess
from loadtest.traffic import load_requests
from rta.v1 import decision_pb2_grpc as pb_grpc
from rta_service.demo import prepare, redis_for_demo


def measure(target: str, pid: int, requests: list, calls: int, concurrency: int) -> tuple[float, float]:
    """(server CPU microseconds per call, calls per second) over `calls` closed-loop calls."""
    proc = psutil.Process(pid)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RtaServiceStub(channel)
        closed_loop(stub.Decide, requests, min(1000, calls), concurrency, 2.0)  # warm up
        c0, t0 = proc.cpu_times(), time.perf_counter()
        closed_loop(stub.Decide, requests, calls, concurrency, 2.0)
        elapsed = time.perf_counter() - t0
        time.sleep(0.2)  # the writer flushes what the last calls left (counted in CPU, not in time)
        c1 = proc.cpu_times()
    return ((c1.user + c1.system) - (c0.user + c0.system)) / calls * 1e6, calls / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--people", type=int, default=2000)
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    opts = p.parse_args(argv)
    with redis_for_demo() as url, tempfile.TemporaryDirectory(prefix="rta-logcost-") as tmp:
        art = prepare(Path(tmp), url, opts.people, 7)
        requests = load_requests(art.world, 5000, ping_share=0.0)[0]
        for _ in range(opts.repeats):
            for log in ("false", "true"):
                with ServerProcess(redis_url=url, model_path=art.model, decision_log=log) as server:
                    cpu, rate = measure(server.target, server.proc.pid, requests, opts.calls, opts.concurrency)
                print(f"decision_log={log:5}  server CPU {cpu:6.0f} us/call  {rate:6.0f} calls/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
