"""Starting the real parts the functional tests talk to (redis-server, LXD, dockerd, ...).

A part that cannot start makes its tests skip with the reason -- except on CI (``CI=true``), where every
part must start, so the same condition fails the test instead of hiding it as a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (on CI) because a real part could not be started."""
    if ON_CI:
        pytest.fail(f"real part unavailable on CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ""
) -> object:
    """Poll ``condition`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}: {last_exc!r}")


@dataclass
class RedisServer:
    """A redis-server process owned by the test session."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def restart(self) -> None:
        """Start the server again on the same port (after ``stop``), e.g. for outage tests."""
        self.stop()
        self.process = _spawn_redis(self.port, self.directory)


def _spawn_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (scripts/dev-setup.sh installs it)")
        raise AssertionError("unreachable")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    try:
        wait_for(ready, timeout=10, what=f"redis-server on port {port}")
    except TimeoutError as exc:
        process.kill()
        unavailable(f"redis-server did not start: {exc}")
    return process


def start_redis(directory: Path) -> RedisServer:
    """Start a private redis-server on a free loopback port."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    return RedisServer(port=port, directory=directory, process=_spawn_redis(port, directory))
