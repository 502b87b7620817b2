"""Shared plumbing of the benchmarks: real parts (redis-server, the GitHub emulator, a manager process),
figures with their reasons, percentiles, and the machine/commit stamp.

Nothing here times anything by itself: each ``bench_*.py`` measures, this module only starts and stops
what they measure against. Every part listens on loopback (the LXD benchmarks add the lxdbr0 address).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
for _path in (str(SRC), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

logger = logging.getLogger("benchmarks")

#: A figure: a number, or None with a reason.
Figure = float | int | None


class Skip(Exception):  # reads as an outcome: the part was skipped
    """A part of a benchmark cannot run here; the message is the reason written beside its figures."""


@dataclass
class Figures:
    """Figures of one benchmark, each a number or ``None`` with a ``<key>_reason`` beside it."""

    values: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def set(self, key: str, value: Figure, reason: str | None = None) -> None:
        """Record ``key``; ``None`` needs a reason (why the part could not run)."""
        if value is None:
            self.values[key] = None
            self.values[f"{key}_reason"] = reason or "not measured"
        else:
            self.values[key] = round(float(value), 4) if isinstance(value, float) else value
            self.values.pop(f"{key}_reason", None)

    def null(self, keys: Iterable[str], reason: str) -> None:
        """Every key in ``keys`` could not be measured, for the same reason."""
        for key in keys:
            self.set(key, None, reason)

    def update(self, other: Figures) -> None:
        """Merge ``other`` in; detail sections that both have (e.g. ``pickup``) are merged one level deep."""
        self.values.update(other.values)
        for key, value in other.details.items():
            mine = self.details.get(key)
            if isinstance(mine, dict) and isinstance(value, dict):
                mine.update(value)
            else:
                self.details[key] = value


@dataclass
class Context:
    """What every benchmark gets: the mode and a scratch directory it may fill."""

    quick: bool
    tmp: Path
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(
        default_factory=dict
    )  # e.g. the runner image a later bench reuses


# ----------------------------------------------------------------------------------- numbers
def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` percentile (0..100) with linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summary(values: Iterable[float]) -> dict[str, float | int | None]:
    """Count, p50, p95 and max of ``values`` (seconds)."""
    data = list(values)
    return {
        "n": len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "max": max(data) if data else None,
    }


# ------------------------------------------------------------------------------------ waiting
def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it is truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail while a part starts
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {what}" + (f": {last!r}" if last else "")
            )
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


# ------------------------------------------------------------------------------------- redis
@dataclass
class Redis:
    """A private redis-server on a free loopback port."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=10, decode_responses=True
        )

    def flush(self) -> None:
        self.client().flushall()

    def stop(self) -> None:
        stop_process(self.process)


def start_redis(directory: Path) -> Redis:
    binary = shutil.which("redis-server")
    if binary is None:
        raise Skip("redis-server is not installed (scripts/dev-setup.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = Redis(port, process)
    try:
        wait_for(lambda: server.client().ping(), 10, f"redis-server on port {port}")
    except TimeoutError as exc:
        server.stop()
        raise Skip(f"redis-server did not start: {exc}") from None
    return server


def stop_process(process: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """SIGTERM a process we started, SIGKILL it after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# ---------------------------------------------------------------------------------- emulator
ORG_A, ORG_B = "bench-a", "bench-b"


def fleet_world(repos_per_org: int = 25) -> tuple[list[str], list[str]]:
    """Two orgs with ``repos_per_org`` repositories each (50 repositories by default)."""
    orgs = [ORG_A, ORG_B]
    return orgs, [f"{org}/repo-{i:02d}" for org in orgs for i in range(repos_per_org)]


def start_emulator(host: str = "127.0.0.1", **options: Any) -> Any:
    """An in-process emulator (``.url``, ``.control``, ``.state``, ``.emulator``)."""
    from github_emulator.testing import start_emulator as _start

    return _start(host=host, port=0, **options)


def emulator_units(emu: Any) -> dict[str, int]:
    """Rate-limit units the emulator charged, per token (its own accounting: the ground truth)."""
    limiter = getattr(emu.emulator, "limiter", None)
    if limiter is None:
        return {}
    with limiter._lock:  # read-only snapshot of the emulator's counter
        return dict(limiter.units)


def token_key(token: str) -> str:
    from github_emulator.state import token_key as _key

    return _key(token)


def make_runners_online(emu: Any, names_prefix: str | None = None) -> int:
    """Turn the emulator's runners that never connected into simulated online ones (no process needed).

    A runner registered by JIT but never connected shows ``offline``; a fleet at steady state is online.
    Simulated runners are always online, idle until they are given a job, and finish it on their own.
    """
    state = emu.state
    count = 0
    with state.lock:
        now = time.time()
        for runner in state.runners.values():
            if names_prefix is not None and not runner.name.startswith(names_prefix):
                continue
            if runner.simulated:
                continue
            runner.simulated = True
            runner.os = "linux"
            runner.arch = "x64"
            runner.version = state.settings.runner_version
            runner.connected_at = runner.last_seen = now
            count += 1
    return count


def runner_tarball(directory: Path) -> tuple[Path, str, str]:
    """The emulator's runner application as a local tarball: (path, sha256, version)."""
    import hashlib

    from github_emulator import DEFAULT_RUNNER_VERSION
    from github_emulator.runner_app import build_tarball, filename

    data = build_tarball(DEFAULT_RUNNER_VERSION)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename("linux", "x64", DEFAULT_RUNNER_VERSION)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), DEFAULT_RUNNER_VERSION


# ------------------------------------------------------------------------------- the manager
def manager_config(
    *,
    github_url: str,
    token_file: Path,
    redis_url: str,
    paths: list[str],
    state_dir: Path,
    group: Mapping[str, Any],
    backends: Mapping[str, Any],
    unit: str = "bench-0",
    prefix: str = "bench",
    webhook: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A manager config (as a mapping) for one runner group; ``extra`` sets top-level keys."""
    github: dict[str, Any] = {"url": github_url, "token_file": str(token_file), "paths": paths}
    github.update(extra.pop("github", {}))
    data: dict[str, Any] = {
        "github": github,
        "redis": {"url": redis_url},
        "runner_groups": [dict(group)],
        "backends": {k: dict(v) for k, v in backends.items()},
        "prefix": prefix,
        "unit": unit,
        "state_dir": str(state_dir),
        "metrics_listen": None,
    }
    if webhook is not None:
        data["webhook"] = dict(webhook)
    data.update(extra)
    return data


def write_secret(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    path.chmod(0o600)
    return path


def in_process_manager(config: Mapping[str, Any]) -> Any:
    """A RunnerManager in this process (its GitHub client's stats are read directly)."""
    from github_runner_manager.config import parse_config
    from github_runner_manager.manager import RunnerManager

    return RunnerManager(parse_config(config))


class ManagerProcess:
    """``github-runner-manager --config FILE run`` in its own process (what an operator runs)."""

    def __init__(self, config: Mapping[str, Any], directory: Path, command: str = "run") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "config.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = directory / "manager.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        env.pop("GITHUB_TOKEN", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from github_runner_manager.cli import main; sys.exit(main())",
             "--config", str(self.config_path), "--log-level", "info", command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(directory),
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> bool:
        """Raise with the log tail when the process has died; else False (so it can lead an ``or``)."""
        if not self.alive():
            raise RuntimeError(
                f"the manager process exited ({self.process.returncode}): {self.tail()}"
            )
        return False

    def tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process, grace=30)
        self._log.close()


# ------------------------------------------------------------------------------- the stamp
def git_commit() -> str:
    """HEAD of the checkout, with ``-dirty`` when the tree has changes (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "load_avg_start": load_average(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (the machine may be shared with other work)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@contextlib.contextmanager
def scratch(
    parent: Path | None = None, prefix: str = "ghrm-bench-", keep: bool = False
) -> Iterator[Path]:
    """A temporary directory, removed afterwards unless ``keep`` (manager logs, configs: for debugging)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=str(parent) if parent else None))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
