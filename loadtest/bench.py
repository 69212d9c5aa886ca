"""`rta bench`: Decide against a bare Echo on the same server stack, in one run.

Both RPCs go through the same `rta serve` process (same grpc.aio server, limits, event loop), so
their ratio is the cost of deciding. Each round measures, for Echo then Decide:
- one call in flight: p50/p99 latency as the client sees it;
- `concurrency` calls in flight (closed loop): throughput and p50/p99.
Rounds alternate the two so drift on a shared machine hits both; the median round is reported.
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


def measure(target: str, decide_requests: list, calls: int = 3000, concurrency: int = 16, rounds: int = 3) -> dict:
    echo_requests = [pb.EchoRequest(payload=r.SerializeToString()) for r in decide_requests[:1000]]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RtaServiceStub(channel)
        kinds = {"echo": (stub.Echo, echo_requests), "decide": (stub.Decide, decide_requests)}
        for method, reqs in kinds.values():  # warm up connections, caches and the model
            closed_loop(method, reqs, 500, concurrency, 5.0)
        per_round: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(rounds):
            for kind, (method, reqs) in kinds.items():
                s50, s99 = _pct(_latencies(sequential(method, reqs, max(300, calls // 3), 5.0)))
                t0 = time.perf_counter()
                results = closed_loop(method, reqs, calls, concurrency, 5.0)
                thr = calls / (time.perf_counter() - t0)
                c50, c99 = _pct(_latencies(results))
                per_round[kind].append({"throughput": thr, "p50_ms_1": s50, "p99_ms_1": s99,
                                        "p50_ms_n": c50, "p99_ms_n": c99, "degraded": _degraded_share(results)})
    result = {kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
              for kind, rows in per_round.items()}
    result["ratio"] = result["decide"]["throughput"] / result["echo"]["throughput"]
    result["config"] = {"calls": calls, "concurrency": concurrency, "rounds": rounds}
    return result


def report(result: dict) -> str:
    c = result["config"]
    lines = [f"rta bench: {c['rounds']} rounds x {c['calls']} calls, {c['concurrency']} in flight "
             "(median round; client-side latency)",
             f"{'':8} {'calls/s':>9} {'p50 1-in-flight':>16} {'p99 1-in-flight':>16} "
             f"{'p50 @N':>8} {'p99 @N':>8}"]
    for kind in ("echo", "decide"):
        r = result[kind]
        lines.append(f"{kind:8} {r['throughput']:9.0f} {r['p50_ms_1']:14.2f}ms {r['p99_ms_1']:14.2f}ms "
                     f"{r['p50_ms_n']:6.2f}ms {r['p99_ms_n']:6.2f}ms")
    lines.append(f"decide/echo throughput ratio: {result['ratio']:.2f}x "
                 f"(degraded Decide answers: {result['decide']['degraded']:.1%})")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")
