"""`rta demo` and the artifacts `rta bench` needs: a small simulated world, its profiles in Redis,
a trained model, the service in its own process, and traffic through a real gRPC client.
Wiring only; every step is the same code the individual commands run."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from rta.v1 import decision_pb2 as pb
from rta.v1 import decision_pb2_grpc as pb_grpc

from .embedded_redis import EmbeddedRedis

AUDIENCES = ("member", "lapsed", "known_non_member", "unreachable", "unknown")


@dataclass
class Artifacts:
    world: Path
    model: Path
    summaries: dict = field(default_factory=dict)


def say(msg: str) -> None:
    print(msg, flush=True)


def prepare(workdir: Path, redis_url: str, people: int, seed: int) -> Artifacts:
    """simulate -> cdp -> train, printing a line per stage."""
    from cdp.pipeline import run as run_cdp  # noqa: PLC0415 - the offline extra
    from simulate.world import simulate  # noqa: PLC0415
    from training.train import train  # noqa: PLC0415

    world, model = workdir / "world", workdir / "model.onnx"
    t = time.perf_counter()
    sim = simulate(world, people=people, seed=seed)
    say(f"[simulate] {people:,} people, {sim['devices']:,} devices, {sim['rows']['traffic']:,} exposures, "
        f"{sim['rows']['conversions']:,} conversions -> {world} ({time.perf_counter() - t:.1f}s)")
    t = time.perf_counter()
    cdp = run_cdp(world, redis_url, allow_shrink=True)  # a new world replaces whatever an earlier demo left
    exp = cdp["export"]
    say(f"[cdp]      {cdp['profiles']:,} OneID profiles ({cdp['members']:,} members) -> "
        f"{exp['keys_written']:,} device keys in Redis generation {exp['generation']}, "
        f"{exp['bytes_per_key']:.0f} bytes of Redis memory per key ({time.perf_counter() - t:.1f}s)")
    t = time.perf_counter()
    tr = train(world, model, seed=seed)
    say(f"[train]    LightGBM -> ONNX {tr['model_version']}: AUC {tr['auc']} (true-propensity ceiling "
        f"{tr['ceiling_auc']}), parity max |diff| {tr['parity_max_diff']:.2e} ({time.perf_counter() - t:.1f}s)")
    return Artifacts(world, model, {"simulate": sim, "cdp": cdp, "train": tr})


@contextlib.contextmanager
def redis_for_demo():
    """RTA_REDIS_URL when set, else an embedded redis-server that goes away with the demo."""
    url = os.environ.get("RTA_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def summarize(audiences: list[str], answers: list, deadline_s: float) -> str:
    by_aud: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    reasons: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    lat, server_us, degraded, late = [], [], 0, 0
    for aud, (resp, seconds) in zip(audiences, answers, strict=True):
        lat.append(seconds)
        late += seconds > deadline_s
        if isinstance(resp, grpc.StatusCode):
            errors[resp.name] += 1
            continue
        server_us.append(resp.processing_time_us)
        degraded += resp.internal.degraded
        if aud == "ping":
            continue
        by_aud[aud][0] += 1
        by_aud[aud][1] += resp.decision == pb.BID
        reasons[pb.Reason.Name(resp.internal.reasons[0]) if resp.internal.reasons else "NONE"] += 1
    lines = ["", "Bid rate by audience (ground truth from the simulator):"]
    for aud in AUDIENCES:
        n, bids = by_aud.get(aud, (0, 0))
        if n:
            lines.append(f"  {aud:18} {n:6,} requests  {bids / n:6.1%} bid")
    lines.append("Main reasons: " + ", ".join(f"{r} {c:,}" for r, c in reasons.most_common()))
    lat_ms = np.array(lat) * 1000
    lines.append(f"Client latency: p50 {np.percentile(lat_ms, 50):.2f} ms, p95 {np.percentile(lat_ms, 95):.2f} ms, "
                 f"p99 {np.percentile(lat_ms, 99):.2f} ms; over the {deadline_s * 1000:.0f} ms deadline: {late}")
    if server_us:
        s = np.array(server_us) / 1000
        lines.append(f"In-service time: p50 {np.percentile(s, 50):.2f} ms, p99 {np.percentile(s, 99):.2f} ms")
    lines.append(f"Degraded answers: {degraded}; gRPC errors: {dict(errors) or 0}")
    return "\n".join(lines)


def run_demo(people: int = 20000, requests: int = 3000, concurrency: int = 4, seed: int = 7,
             keep: Path | None = None) -> int:
    from loadtest.client import closed_loop  # noqa: PLC0415
    from loadtest.server_process import ServerProcess  # noqa: PLC0415
    from loadtest.traffic import load_requests  # noqa: PLC0415

    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="rta-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    deadline_s = 0.060
    try:
        with redis_for_demo() as redis_url:
            say(f"RTA demo: Redis at {redis_url}, work directory {workdir}")
            art = prepare(workdir, redis_url, people, seed)
            reqs, audiences = load_requests(art.world, requests, seed=seed)
            server = ServerProcess(redis_url=redis_url, model_path=art.model).start()
            try:
                say(f"[serve]    rta serve on {server.target}; sending {len(reqs):,} Decide calls, "
                    f"{concurrency} in flight, {deadline_s * 1000:.0f} ms deadline")
                with grpc.insecure_channel(server.target) as channel:
                    stub = pb_grpc.RtaServiceStub(channel)
                    answers = closed_loop(stub.Decide, reqs, len(reqs), concurrency, deadline_s)
            finally:
                code = server.stop()
            say(summarize(audiences, answers, deadline_s))
            tr = art.summaries["train"]
            say(f"Model: {tr['model_version']}, validation AUC {tr['auc']} vs ceiling {tr['ceiling_auc']}")
            say(f"Service stopped with exit code {code} after SIGTERM.")
            return 0 if code == 0 else 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
