"""`rta bench`: Decide against a bare Echo on the same server stack, in one run.

Both RPCs go through the same `rta serve` process (same grpc.aio server, limits, event loop), so
their ratio is the cost of deciding. Each round measures, for Echo then Decide:
- one call in flight: p50/p99 latency as the client sees it, and for Decide the service's own
  processing time (`processing_time_us`), which separates the decision from gRPC and the network;
- `concurrency` calls in flight (closed loop): throughput and p50/p99.
Rounds alternate the two so drift on a shared machine hits both; the median round is reported.
Given the server's pid, it also reports the server's CPU time per call under load: on a shared
machine another tenant steals wall time from both RPCs unevenly, but barely changes CPU per call,
so the CPU ratio is the steadier figure of the two.
Nothing is asserted: figures are printed (and written as JSON with --json).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import grpc
import numpy as np

from loadtest.client import closed_loop, sequential
from rta.v1 import decision_pb2 as pb
from rta.v1 import decision_pb2_grpc as pb_grpc


def _latencies(results) -> np.ndarray:
    failed = [r for r, _ in results if isinstance(r, grpc.StatusCode)]
    if failed:
        raise RuntimeError(f"{len(failed)} calls failed during the bench, e.g. {failed[0]}")
    return np.array([seconds for _, seconds in results])


def _degraded_share(results) -> float:
    """Share of Decide answers that were fallbacks (cheaper than real decisions: they would flatter it)."""
    answers = [r for r, _ in results if isinstance(r, pb.DecideResponse)]
    return sum(a.internal.degraded for a in answers) / len(answers) if answers else 0.0


def _pct(lat: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(lat, 50) * 1000), float(np.percentile(lat, 99) * 1000)


def _cpu_seconds(process) -> float:
    if process is None:
        return float("nan")
    times = process.cpu_times()
    return times.user + times.system


def measure(target: str, decide_requests: list, calls: int = 3000, concurrency: int = 16, rounds: int = 3,
            server_pid: int | None = None) -> dict:
    try:
        import psutil  # noqa: PLC0415 - comes with the loadtest extra (Locust); optional here
        process = psutil.Process(server_pid) if server_pid else None
    except ImportError:
        process = None
    echo_requests = [pb.EchoRequest(payload=r.SerializeToString()) for r in decide_requests[:1000]]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RtaServiceStub(channel)
        kinds = {"echo": (stub.Echo, echo_requests), "decide": (stub.Decide, decide_requests)}
        for method, reqs in kinds.values():  # warm up connections, caches and the model
            closed_loop(method, reqs, 500, concurrency, 5.0)
        per_round: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(rounds):
            for kind, (method, reqs) in kinds.items():
                one = sequential(method, reqs, max(300, calls // 3), 5.0)
                s50, s99 = _pct(_latencies(one))
                inside = [r.processing_time_us / 1e6 for r, _ in one if isinstance(r, pb.DecideResponse)]
                i50, i99 = _pct(np.array(inside)) if inside else (float("nan"), float("nan"))
                cpu0, t0 = _cpu_seconds(process), time.perf_counter()
                results = closed_loop(method, reqs, calls, concurrency, 5.0)
                thr = calls / (time.perf_counter() - t0)
                cpu_us = (_cpu_seconds(process) - cpu0) / calls * 1e6
                c50, c99 = _pct(_latencies(results))
                per_round[kind].append({"throughput": thr, "p50_ms_1": s50, "p99_ms_1": s99,
                                        "p50_ms_n": c50, "p99_ms_n": c99, "degraded": _degraded_share(results),
                                        "server_cpu_us": cpu_us, "service_p50_ms_1": i50, "service_p99_ms_1": i99})
    result = {kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
              for kind, rows in per_round.items()}
    result["ratio"] = result["decide"]["throughput"] / result["echo"]["throughput"]
    result["cpu_ratio"] = result["echo"]["server_cpu_us"] / result["decide"]["server_cpu_us"]
    result["config"] = {"calls": calls, "concurrency": concurrency, "rounds": rounds}
    return result


def report(result: dict) -> str:
    c = result["config"]
    lines = [f"rta bench: {c['rounds']} rounds x {c['calls']} calls, {c['concurrency']} in flight "
             "(median round; client-side latency)",
             f"{'':8} {'calls/s':>9} {'p50 1-in-flight':>16} {'p99 1-in-flight':>16} "
             f"{'p50 @N':>8} {'p99 @N':>8} {'server CPU/call':>16}"]
    for kind in ("echo", "decide"):
        r = result[kind]
        lines.append(f"{kind:8} {r['throughput']:9.0f} {r['p50_ms_1']:14.2f}ms {r['p99_ms_1']:14.2f}ms "
                     f"{r['p50_ms_n']:6.2f}ms {r['p99_ms_n']:6.2f}ms {r['server_cpu_us']:14.0f}us")
    lines.append(f"decide/echo throughput ratio: {result['ratio']:.2f}x "
                 f"(degraded Decide answers: {result['decide']['degraded']:.1%})")
    d = result["decide"]
    lines.append(f"decide inside the service (processing_time_us), 1 in flight: p50 {d['service_p50_ms_1']:.2f}ms "
                 f"p99 {d['service_p99_ms_1']:.2f}ms")
    lines.append(f"echo/decide server CPU per call ratio: {result['cpu_ratio']:.2f}x "
                 "(the steadier figure on a shared host)")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")
