"""Shared machinery of the reliability campaigns (issue 9).

A *fleet* is N ``github-runner-manager run`` processes, each with its own config file, webhook port,
metrics port and fake backend in ``local`` mode with a ``state_file`` (its instances are real local
processes running the emulator's runner app, and they outlive a SIGKILLed manager), all on one Redis
and one GitHub emulator. Everything here talks to the real parts over loopback; nothing is mocked.

Randomness comes from :func:`rng`, seeded with ``CHAOS_SEED`` (default :data:`DEFAULT_SEED`), so a
failing campaign is replayed with the same seed. ``CHAOS_FULL=1`` (``tox -e chaos``) selects the long
form of each campaign; without it the short seeded form runs (CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_lib
import requests
import yaml

from tests.parts import free_port, unavailable, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SEED = 20261125
SEED = int(os.environ.get("CHAOS_SEED", str(DEFAULT_SEED)))
FULL = os.environ.get("CHAOS_FULL", "").strip().lower() not in ("", "0", "false", "no")

# Distinctive secrets: campaign 6 greps every output for them (and for fragments of them).
TOKEN = "ghp_RELIAB1LITYtok3nZZq9xW2vK7mN4pL8sD"
WEBHOOK_SECRET = "whsec-R3liab1lity-S3cr3t-7Hq2Zx"
CLOUD_SECRET = "cloudKEY-R3liab1lity-9fT6yU1oP0aS"
PREFIX = "ghr"
KEY_PREFIX = "ghrm"
ORG = "acme"
REPOS = ("acme/app", "acme/lib")


def rng(purpose: str) -> random.Random:
    """A generator for one purpose, derived from the campaign seed (reproducible per purpose)."""
    return random.Random(f"{SEED}:{purpose}")


def form(short: int, full: int) -> int:
    """The size of a campaign: ``full`` under ``CHAOS_FULL=1``, else ``short``."""
    return full if FULL else short


# ---------------------------------------------------------------------------------------- processes
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("GITHUB_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``github-runner-manager --config CONFIG ARGS`` once; capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "github_runner_manager.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        check=False,
    )


def proc_start(pid: int | None) -> str | None:
    """Start time of a live, non-zombie process (``/proc/PID/stat`` field 22)."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    if not rest or rest[0] in {"Z", "X"}:
        return None
    return rest[19] if len(rest) > 19 else None


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    current = proc_start(pid)
    return current is not None and (start is None or current == start)


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc, by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def no_traceback(text: str) -> list[str]:
    """Lines of ``text`` that show an unexpected exception (a traceback or 'failed unexpectedly')."""
    return [
        line
        for line in text.splitlines()
        if "Traceback (most recent call last)" in line or "unexpectedly" in line
    ]


# ------------------------------------------------------------------------------------------- Redis
@dataclass
class RedisProc:
    """A private redis-server with an append-only file, so a stop/start keeps the data.

    (The session ``redis_server`` fixture starts Redis without persistence: a restart empties it.)
    """

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis_lib.Redis:
        return redis_lib.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)

    def start(self) -> RedisProc:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (scripts/dev-setup.sh installs it)")
            raise AssertionError("unreachable")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        try:
            wait_for(ready, 15, what=f"redis-server on port {self.port}")
        except TimeoutError as exc:
            self.process.kill()
            unavailable(f"redis-server did not start: {exc}")
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes its append-only file first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# ------------------------------------------------------------------------------------------ managers
@dataclass
class Manager:
    """One ``github-runner-manager run`` unit: its config, ports, log, fake backend state file."""

    unit: str
    data: dict[str, Any]
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.directory / "config.yaml"

    @property
    def log(self) -> Path:
        return self.directory / "manager.log"

    @property
    def state_file(self) -> Path:
        return Path(self.data["backends"]["fake"]["state_file"])

    @property
    def webhook_url(self) -> str:
        return f"http://{self.data['webhook']['listen']}/webhook"

    @property
    def health_url(self) -> str:
        return f"http://{self.data['webhook']['listen']}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.data['metrics_listen']}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(self.data))
        self.config.chmod(0o600)

    def start(self, wait: bool = True) -> Manager:
        self.write()
        with open(self.log, "ab") as log:
            log.write(f"=== start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "github_runner_manager.cli",
                    "--config",
                    str(self.config),
                    "--log-level",
                    "info",
                    "run",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cli_env(),
                start_new_session=True,
            )
        self.starts += 1
        self.pids.append(self.process.pid)
        if wait:
            wait_for(self.ready, 60, interval=0.05, what=f"manager {self.unit} webhook endpoint")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"manager {self.unit} exited:\n{self.tail()}")
        return requests.get(self.health_url, timeout=2).status_code == 200

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60) -> int | None:
        return self.kill(signal.SIGTERM, timeout)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def instances(self) -> dict[str, dict[str, Any]]:
        return read_instances(self.state_file)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of the manager's /metrics endpoint (0 when absent); sums over unnamed labels."""
        text = requests.get(self.metrics_url, timeout=5).text
        return metric_value(text, name, labels)


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if labels and any(found.get(k) != v for k, v in labels.items()):
            continue
        total += float(match.group(3))
    return total


def read_instances(state_file: Path) -> dict[str, dict[str, Any]]:
    """The fake backend's instances as its state file holds them (retry a read racing a replace)."""
    for _ in range(5):
        try:
            return dict(json.loads(state_file.read_text() or "{}"))
        except FileNotFoundError:
            return {}
        except ValueError:
            time.sleep(0.01)
    return dict(json.loads(state_file.read_text() or "{}"))


def instance_alive(data: dict[str, Any]) -> bool:
    """A local-mode instance whose runner process still runs (or that is still being created)."""
    if data.get("state") == "pending":
        return pid_alive(data.get("creator_pid"), data.get("creator_start"))
    return pid_alive(data.get("pid"), data.get("pid_start"))


def kill_instances(state_file: Path) -> None:
    """Never leave a runner process behind, whatever the test did."""
    for data in read_instances(state_file).values():
        pid = data.get("pid")
        if pid and pid_alive(pid, data.get("pid_start")):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------- fleet
def default_groups(**overrides: Any) -> list[dict[str, Any]]:
    group = {
        "name": "small",
        "labels": ["small"],
        "backend": "fake",
        "min_idle": 1,
        "max_runners": 6,
        "cpu": 1,
        "memory": "1GiB",
        "disk": "2GiB",
        "paths": [ORG],
    }
    group.update(overrides)
    return [group]


def setup_world(emulator: Any, **settings: Any) -> None:
    control = emulator.control
    control.add_org(ORG)
    for repo in REPOS:
        owner, name = repo.split("/")
        control.add_repo(owner, name)
    control.add_token(TOKEN, orgs=[ORG], repos=list(REPOS))
    if settings:
        control.settings(**settings)


class Fleet:
    """Managers on one Redis and one emulator; knows how to read every part's view of the fleet."""

    def __init__(self, emulator: Any, redis_url: str, tmp: Path) -> None:
        self.emulator = emulator
        self.redis_url = redis_url
        self.tmp = tmp
        self.managers: list[Manager] = []
        self.hooks: dict[str, int] = {}
        self.redis = redis_lib.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)

    def config(self, unit: str, **overrides: Any) -> dict[str, Any]:
        """The config mapping of one unit; ``fake=`` merges into the fake backend's settings."""
        fake = overrides.pop("fake", {})
        directory = self.tmp / unit
        data: dict[str, Any] = {
            "github": {
                "url": self.emulator.url,
                "token": TOKEN,
                "paths": [ORG],
                "poll_interval": "3s",
                "timeout": 5,
            },
            "webhook": {
                "listen": f"127.0.0.1:{free_port()}",
                "path": "/webhook",
                "secret": WEBHOOK_SECRET,
            },
            "redis": {"url": self.redis_url, "key_prefix": KEY_PREFIX},
            "reconcile_interval": "3s",
            "register_timeout": "60s",
            "offline_timeout": "60s",
            "concurrency": 8,
            "prefix": PREFIX,
            "unit": unit,
            "state_dir": str(directory / "state"),
            "metrics_listen": f"127.0.0.1:{free_port()}",
            "runner_groups": default_groups(),
            "backends": {
                "fake": {
                    "mode": "local",
                    "state_file": str(directory / "fake.json"),
                    "work_dir": str(directory / "work"),
                    "create_latency": "0.3s",
                }
            },
        }
        data["backends"]["fake"].update(fake)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    def add(self, unit: str, *, hook: bool = True, **overrides: Any) -> Manager:
        manager = Manager(unit=unit, data=self.config(unit, **overrides), directory=self.tmp / unit)
        manager.write()
        self.managers.append(manager)
        if hook:
            self.hooks[unit] = self.emulator.control.add_hook(
                manager.webhook_url, WEBHOOK_SECRET, org=ORG
            )
        return manager

    def start(self) -> None:
        for manager in self.managers:
            manager.start(wait=False)
        for manager in self.managers:
            wait_for(manager.ready, 60, interval=0.05, what=f"manager {manager.unit} ready")

    def close(self) -> None:
        for manager in self.managers:
            if manager.alive():
                with contextlib.suppress(Exception):
                    manager.kill(signal.SIGKILL, timeout=10)
        for manager in self.managers:
            kill_instances(manager.state_file)

    # ------------------------------------------------------------------ views
    def records(self) -> dict[str, dict[str, str]]:
        """Every runner record in Redis (name → hash)."""
        names = self.redis.smembers(f"{KEY_PREFIX}:runners")
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(f"{KEY_PREFIX}:runner:{name}")
        out = {}
        for name, data in zip(names, pipe.execute(), strict=True):
            if data:
                out[name] = data
        return out

    def github_runners(self) -> dict[str, dict[str, Any]]:
        """GitHub's runners with our prefix (the emulator's model, no REST cost)."""
        with self.emulator.state.lock:
            return {
                r.name: {
                    "id": r.id,
                    "busy": r.job_id is not None,
                    "online": self.emulator.state.is_online(r),
                }
                for r in self.emulator.state.runners.values()
                if r.name.startswith(f"{PREFIX}-")
            }

    def all_instances(self) -> dict[str, tuple[str, dict[str, Any]]]:
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for manager in self.managers:
            for name, data in manager.instances().items():
                out[name] = (manager.unit, data)
        return out

    def jobs(self) -> dict[int, dict[str, Any]]:
        return {int(j["id"]): j for j in self.emulator.control.jobs()}

    def queue_job(
        self,
        steps: list[str] | None = None,
        labels: Iterable[str] = ("self-hosted", "small"),
        repo: str | None = None,
    ) -> int:
        return self.emulator.control.queue_job(repo or REPOS[0], list(labels), steps or ["echo ok"])

    def wait_jobs_done(self, job_ids: Iterable[int], timeout: float) -> dict[int, dict[str, Any]]:
        wanted = set(job_ids)

        def done() -> bool:
            jobs = self.jobs()
            return all(jobs[j]["status"] == "completed" for j in wanted)

        try:
            wait_for(done, timeout, interval=0.25, what=f"{len(wanted)} jobs completed")
        except TimeoutError:
            jobs = self.jobs()
            left = {
                j: (jobs[j]["status"], jobs[j]["runner_name"])
                for j in wanted
                if jobs[j]["status"] != "completed"
            }
            raise AssertionError(f"jobs not completed: {left}\n{self.tails()}") from None
        jobs = self.jobs()
        return {j: jobs[j] for j in wanted}

    def tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {m.unit}\n{m.tail(lines)}" for m in self.managers)

    # ------------------------------------------------------------------ invariants
    def orphan_github_runners(self) -> list[str]:
        """GitHub runners with our prefix that no record and no instance knows (re-checked, race-free)."""
        for _ in range(5):
            github = self.github_runners()
            records = self.records()
            instances = self.all_instances()
            candidates = [n for n in github if n not in records and n not in instances]
            if not candidates:
                return []
            still = self.github_runners()
            records = self.records()
            candidates = [n for n in candidates if n in still and n not in records]
            if not candidates:
                return []
            time.sleep(0.05)
        return candidates

    def unit_problems(self, manager: Manager, *, settled_busy: bool = False) -> list[str]:
        """What must hold for ``manager``'s unit once no process of it runs and one reconcile ran.

        * no instance without a record (leaked instance), none left mid-creation by a dead creator;
        * no record of the unit left ``creating``/``deleting``, none without an instance;
        * with ``settled_busy``: every instance's runner process alive or its record done.
        """
        problems: list[str] = []
        instances = manager.instances()
        records = {n: r for n, r in self.records().items() if r.get("unit") == manager.unit}
        for name, data in instances.items():
            if name not in records:
                problems.append(
                    f"{manager.unit}: leaked instance {name} ({data.get('state')}) has no record"
                )
            if data.get("state") == "pending" and not instance_alive(data):
                problems.append(
                    f"{manager.unit}: instance {name} left mid-creation by a dead creator"
                )
        for name, rec in records.items():
            if rec.get("state") in ("creating", "deleting"):
                problems.append(
                    f"{manager.unit}: record {name} stuck {rec.get('state')}{self.why(name, rec)}"
                )
            elif name not in instances:
                problems.append(
                    f"{manager.unit}: record {name} ({rec.get('state')}) has no instance"
                    f"{self.why(name, rec)}"
                )
        return problems

    def why(self, name: str, rec: dict[str, str]) -> str:
        """Diagnosis of a stuck record: a delete lease still held, or no creator session recorded."""
        notes = []
        ttl = self.redis.pttl(f"{KEY_PREFIX}:lease:delete:{name}")
        if ttl and ttl > 0:
            notes.append(f"its delete lease is still held for {ttl / 1000:.0f}s")
        if rec.get("state") == "creating":
            session = rec.get("session")
            if not session:
                notes.append("reserved without a creator session")
            else:
                pid, _, start = session.partition(":")
                alive = pid.isdigit() and proc_start(int(pid)) == start
                notes.append(f"creator session {session} {'alive' if alive else 'dead'}")
        return f" ({'; '.join(notes)})" if notes else ""


# ------------------------------------------------------------------------------------------ sampler
@dataclass
class Sampler:
    """Samples in a thread, until closed, the GitHub runners and instances of the fleet; keeps maxima."""

    fleet: Fleet
    interval: float = 0.05
    github_max: int = 0
    instance_max: int = 0
    record_max: int = 0
    samples: int = 0
    over: list[str] = field(default_factory=list)
    cap: int | None = None
    errors: list[str] = field(default_factory=list)
    per_group_max: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                github = self.fleet.github_runners()
                instances = self.fleet.all_instances()
                records = self.fleet.redis.scard(f"{KEY_PREFIX}:runners")
            except Exception as exc:
                self.errors.append(repr(exc))
                continue
            live = set(instances)  # being deleted counts too: its record is still there
            self.github_max = max(self.github_max, len(github))
            self.instance_max = max(self.instance_max, len(live))
            self.record_max = max(self.record_max, int(records))
            if self.cap is not None and (len(github) > self.cap or len(live) > self.cap):
                self.over.append(
                    f"t={time.time():.3f}: {len(github)} GitHub runners, {len(live)} instances > cap {self.cap}"
                )
            self.samples += 1


@contextlib.contextmanager
def producer(
    fleet: Fleet,
    gen: random.Random,
    *,
    gap: tuple[float, float],
    steps: Callable[[int], list[str]],
    limit: int | None = None,
) -> Iterator[list[int]]:
    """Queue jobs in a thread at seeded random gaps until the block ends; yields the job ids."""
    ids: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        n = 0
        while not stop.is_set() and (limit is None or n < limit):
            try:
                ids.append(fleet.queue_job(steps(n), repo=REPOS[n % len(REPOS)]))
            except BaseException as exc:
                errors.append(exc)
                return
            n += 1
            stop.wait(gen.uniform(*gap))

    thread = threading.Thread(target=run, daemon=True, name="producer")
    thread.start()
    try:
        yield ids
    finally:
        stop.set()
        thread.join(30)
    if errors:
        raise errors[0]


def redis_dump(client: redis_lib.Redis) -> list[bytes]:
    """Every key and value in Redis as bytes (SCAN + DUMP and a readable rendering per type)."""
    out: list[bytes] = []
    for key in client.scan_iter(count=500):
        out.append(key)
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        dumped = client.dump(key)
        if dumped:
            out.append(dumped)
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            for k, v in client.hgetall(key).items():
                out += [k, v]
        elif kind == "list":
            out += client.lrange(key, 0, -1)
        elif kind == "set":
            out += list(client.smembers(key))
        elif kind == "zset":
            out += [m for m, _s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for entry_id, fields in client.xrange(key):
                out.append(entry_id)
                for k, v in fields.items():
                    out += [k, v]
    return out


def report(name: str, summary: dict[str, Any]) -> None:
    """Print the campaign's figures (and keep them under $CHAOS_RESULTS_DIR when set)."""
    line = json.dumps({"campaign": name, "seed": SEED, **summary}, sort_keys=True)
    print(f"\nCAMPAIGN {line}")
    directory = os.environ.get("CHAOS_RESULTS_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{name}.json"), "w") as out:
            out.write(line + "\n")


# ------------------------------------------------------------------------------------- known bugs
#: Bugs a campaign found that are reported but not fixed yet (their module's owner is still at work),
#: by the text of the problem they cause. A campaign whose only problems are known bugs is reported as
#: an expected failure naming them; any other problem fails it. Remove an entry once it is fixed.
KNOWN_BUGS: dict[str, re.Pattern[str]] = {}


def settle(problems: list[str], context: str = "") -> None:
    """Pass when there is no problem; xfail when every problem is a known bug; fail otherwise."""
    if not problems:
        return
    import pytest

    unknown = [p for p in problems if not any(rx.search(p) for rx in KNOWN_BUGS.values())]
    assert not unknown, "\n".join(unknown) + ("\n" + context if context else "")
    bugs = sorted({name for p in problems for name, rx in KNOWN_BUGS.items() if rx.search(p)})
    pytest.xfail("known bugs: " + " | ".join(bugs) + f" ({len(problems)} problems)")


#: The per-test timeout of the campaigns: the full form runs far longer than pyproject's 600 s.
TIMEOUT = 3600 if FULL else 600
