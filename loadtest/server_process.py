"""`rta serve` in a child process on a free port, for the demo and `rta bench`: the service runs as
in production (its own process and event loop), and the load generator does not share its GIL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rta_service.embedded_redis import _die_with_parent, free_port


class ServerProcess:
    def __init__(self, **settings):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RTA_")}
        env.update({"RTA_LISTEN": f"127.0.0.1:{self.port}", "RTA_ADMIN_LISTEN": "", "RTA_LOG_LEVEL": "WARNING"})
        env.update({f"RTA_{k.upper()}": str(v) for k, v in settings.items()})
        self.env = env
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "rta_service.cli", "serve"], env=self.env,
                                     preexec_fn=_die_with_parent)
        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rta serve exited with code {self.proc.returncode}")
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                            health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("rta serve did not become SERVING in time")

    def stop(self) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL if it hangs; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
