"""Smoke tests of the documented commands: `rta demo` end to end, `rta bench` and the Locust file."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _rta(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "rta_service.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    keep = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RTA_")}
    result = _rta("demo", "--people", "3000", "--requests", "600", "--keep", str(keep), env=env)
    return result, keep


def test_demo_runs_end_to_end_and_leaves_nothing_behind(demo_run):
    result, keep = demo_run
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    for audience in ("member", "unknown"):
        assert re.search(rf"^\s+{audience}\s+[\d,]+ requests\s+[\d.]+% bid", out, re.M), out
    assert re.search(r"Client latency: p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms", out), out
    auc = float(re.search(r"validation AUC ([\d.]+)", out).group(1))
    assert 0.5 < auc <= 1.0, out
    calls = sum(int(n.replace(",", "")) for n in re.findall(r"([\d,]+) requests", out))
    errors = sum(int(n) for n in re.findall(r"'[A-Z_]+': (\d+)", out.split("gRPC errors:")[1]))
    assert errors <= 0.01 * calls, out  # Tencent's bar for timeouts and errors in a stress test
    assert "exit code 0" in out
    redis_port = int(re.search(r"Redis at redis://127.0.0.1:(\d+)", out).group(1))
    serve_port = int(re.search(r"rta serve on 127.0.0.1:(\d+)", out).group(1))
    assert not _port_open(redis_port) and not _port_open(serve_port), "the demo left a server running"
    assert (keep / "model.onnx").exists() and (keep / "world" / "traffic.parquet").exists()


def test_locust_file_drives_the_service(demo_run, redis_url):
    """The documented load test: load the kept world into Redis, serve the kept model, run Locust."""
    from loadtest.server_process import ServerProcess

    _, keep = demo_run
    assert _rta("cdp", "--input", str(keep / "world"), "--redis-url", redis_url, "--grace-s", "0").returncode == 0
    locust = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
    with ServerProcess(redis_url=redis_url, model_path=keep / "model.onnx") as server:
        result = subprocess.run(
            [locust, "-f", str(ROOT / "loadtest" / "locustfile.py"), "--host", server.target, "--headless",
             "-u", "4", "-r", "4", "-t", "4s", "--rta-world", str(keep / "world"), "--rta-requests", "500",
             "--only-summary"],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
    text = result.stdout + result.stderr
    row = re.search(r"grpc\s+/rta\.v1\.RtaService/Decide\s+(\d+)\s+(\d+)\(", text)
    assert row, text[-3000:]
    calls, failures = int(row.group(1)), int(row.group(2))
    assert calls > 50 and failures == 0, text[-3000:]


def test_bench_prints_both_rpcs_and_their_ratio(tmp_path):
    """Behaviour only: the figures are printed and written; their values are not asserted."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RTA_")}
    out_json = tmp_path / "bench.json"
    result = _rta("bench", "--people", "1500", "--distinct", "500", "--calls", "300", "--rounds", "1",
                  "--concurrency", "4", "--json", str(out_json), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^echo\s+\d+", result.stdout, re.M) and re.search(r"^decide\s+\d+", result.stdout, re.M)
    import json

    figures = json.loads(out_json.read_text())
    assert figures["ratio"] == pytest.approx(figures["decide"]["throughput"] / figures["echo"]["throughput"])
    assert figures["decide"]["server_cpu_us"] > 0 and figures["echo"]["server_cpu_us"] > 0
    assert "server CPU per call ratio" in result.stdout
    assert figures["decide"]["service_p99_ms_1"] >= figures["decide"]["service_p50_ms_1"] > 0
