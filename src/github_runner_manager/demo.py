"""``github-runner-manager demo``: the whole system on this machine, end to end, then gone again.

What it does, in order (each step says what it is doing; an error is one line, never a traceback):

1. **Backend**: LXD when it answers and the runner image is there or can be built, else Docker (the same
   image, ``docker import``-ed from the builder's root filesystem), else local processes running the
   runner application -- saying which and why (``--backend`` forces one).
2. **Parts**: a private ``redis-server`` on a free loopback port (its files in a temp dir) and the GitHub
   emulator in this process, listening where the runners reach it (the LXD bridge address, Docker's
   gateway, or loopback) with ``agent_host`` set to that address, and a ``workflow_job`` hook signed with
   a fresh secret aimed at the manager's webhook listener on loopback.
3. **Image**: the runner application from the emulator's downloads endpoint (sha256-verified), baked
   into the runner image by ``scripts/build-runner-image.sh``. An image whose ``cache_key`` matches is
   reused as is; a root filesystem cached by the tests (``/var/cache/github-runner-tests``) or by the
   builder (``/var/cache/github-runner-image``) turns a build into an import. The demo's images are
   called ``ghrm-demo-*``: the production alias ``github-runner-<base>`` is never touched.
4. **Manager**: a :class:`RunnerManager` service (webhook intake, consumers, reconcile loop, sweeper)
   with two runner groups: ``small`` keeps ``min_idle: 2`` warm runners (warm pickup), ``large``
   starts a runner per job (cold pickup).
5. **Jobs**: N jobs alternating over the two label sets, each with real steps (``echo hello from
   $(hostname)``, ``uname -a``, ...), while a live table shows runners per group and state, jobs
   queued/running/done and pickup latency.
6. **Clean-up** -- also on Ctrl-C, SIGTERM, ``--timeout`` or an error: the service stops, every runner
   is flushed (busy ones too), what is left is counted (backend instances, GitHub registrations, Redis
   records), the servers stop and the temp dir goes. Images stay cached for the next run.

The summary (jobs done, pickup p50/p95, GitHub requests and rate-limit units spent, runners left)
is printed and, with ``--json FILE``, written as JSON. Exit status: 0 when every job completed
successfully and no runner is left; 1 otherwise; 130 when interrupted.

The GitHub token and the webhook secret are made up per run, live only in this process and are
never printed or logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import requests
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from github_runner_manager.image import ImageBuildOptions
    from github_runner_manager.manager import RunnerManager
    from github_runner_manager.runner_binary import RunnerBinary

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "lxd", "docker", "local")
ORG = "demo"
REPOS = ("demo/app", "demo/api")
BASE = "debian:bookworm"
ALIAS_PREFIX = "ghrm-demo"
LXD_ALIAS = f"{ALIAS_PREFIX}-debian-bookworm"
DOCKER_REPOSITORY = "ghrm-demo-runner"
LXD_BRIDGE = "lxdbr0"
TEST_IMAGE_CACHE = (
    Path(os.environ.get("GHRM_TEST_CACHE", "/var/cache/github-runner-tests")) / "image-cache"
)
BUILDER_CACHE = Path("/var/cache/github-runner-image")
#: What a Docker runner container runs: the runner app with its JIT config taken from the environment
#: (the backend sets RUNNER_JITCONFIG) as user ``runner``; the config never appears in an argument list.
DOCKER_COMMAND = [
    "/bin/sh",
    "-c",
    'ACTIONS_RUNNER_INPUT_JITCONFIG="$RUNNER_JITCONFIG"; export ACTIONS_RUNNER_INPUT_JITCONFIG; '
    "unset RUNNER_JITCONFIG; cd /opt/actions-runner && exec runuser -p -u runner -- ./run.sh",
]
#: The steps of every demo job: real commands, run by the runner inside its machine.
STEPS: list[dict[str, str]] = [
    {"name": "hello", "command": "echo hello from $(hostname)"},
    {"name": "kernel", "command": "uname -a"},
    {"name": "work", "command": "sleep 2 && echo built $(date -u +%H:%M:%S)"},
]


@dataclass(frozen=True)
class DemoGroup:
    """One runner group of the demo and the label set its jobs ask for."""

    name: str
    label: str
    min_idle: int
    max_runners: int

    @property
    def labels(self) -> list[str]:
        return ["self-hosted", "linux", "x64", self.label]


GROUPS = (
    DemoGroup("small", "small", min_idle=2, max_runners=4),
    DemoGroup("large", "large", min_idle=0, max_runners=3),
)


class DemoError(Exception):
    """Something the demo needs could not start; the message is the one line the operator sees."""


@dataclass
class BackendChoice:
    """The backend the demo runs on, where runners reach the host, and why it was picked."""

    name: str  # lxd | docker | local
    reason: str
    host: str  # where the emulator listens and runners reach it
    image_ready: bool = False  # an image exists already (nothing to build)


@dataclass
class Snapshot:
    """What the live table shows at one moment."""

    elapsed: float
    records: dict[str, dict[str, int]]
    instances: dict[str, int]
    jobs: list[dict[str, Any]]
    job_group: dict[int, str]
    create_failures: int
    phase: str


@dataclass
class DemoResult:
    """The summary (also the ``--json`` document)."""

    backend: str = ""
    backend_reason: str = ""
    image: str | None = None
    jobs_total: int = 0
    jobs_completed: int = 0
    jobs_succeeded: int = 0
    pickup_p50_s: float | None = None
    pickup_p95_s: float | None = None
    pickup_max_s: float | None = None
    pickup_by_group: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    github_requests: int = 0
    rate_limit_units: int = 0
    github_not_modified: int = 0
    webhook_deliveries: int = 0
    runners_left: int | None = None
    runners_left_detail: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    timed_out: bool = False
    interrupted: bool = False
    error: str | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.timed_out
            and not self.interrupted
            and self.jobs_total > 0
            and self.jobs_succeeded == self.jobs_completed == self.jobs_total
            and self.runners_left == 0
        )


# ------------------------------------------------------------------------------ small helpers
def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run(args: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:200]
    return "no output"


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _wait(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------ backend choice
def probe_lxd() -> tuple[str | None, str]:
    """(the host's address on the LXD bridge, or None; why)."""
    if shutil.which("lxc") is None:
        return None, "LXD is not installed (scripts/dev-setup.sh installs it)"
    try:
        answer = _run(["lxc", "query", "/1.0"], timeout=15)
    except subprocess.TimeoutExpired:
        return None, "LXD did not answer within 15s"
    if answer.returncode != 0:
        return (
            None,
            f"LXD is not running ({_first_line(answer.stderr)}; scripts/start-lxd.sh starts it)",
        )
    bridge = _run(["lxc", "network", "get", LXD_BRIDGE, "ipv4.address"], timeout=15)
    address = bridge.stdout.strip().split("/")[0]
    if bridge.returncode != 0 or not address or address == "none":
        return (
            None,
            f"LXD has no {LXD_BRIDGE} bridge with an IPv4 address (scripts/start-lxd.sh makes one)",
        )
    return (
        address,
        f"LXD answers on its local socket; containers reach this host at {address} ({LXD_BRIDGE})",
    )


def lxd_alias_properties(alias: str) -> dict[str, str] | None:
    """The properties of the image an LXD alias points at (None: no such alias)."""
    found = _run(["lxc", "query", f"/1.0/images/aliases/{alias}"], timeout=30)
    if found.returncode != 0:
        return None
    target = json.loads(found.stdout)["target"]
    image = _run(["lxc", "query", f"/1.0/images/{target}"], timeout=30)
    if image.returncode != 0:
        return None
    return dict(json.loads(image.stdout).get("properties") or {})


def builder_problem() -> str | None:
    """Why the runner image cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "building the runner image needs root"
    if shutil.which("mmdebstrap") is None and not any(
        (d / "rootfs").glob("*.tar") for d in (TEST_IMAGE_CACHE, BUILDER_CACHE)
    ):
        return "mmdebstrap is not installed (scripts/dev-setup.sh installs it) and no root filesystem is cached"
    return None


def _docker_client(timeout: float = 10) -> Any:
    import docker  # the docker extra; an ImportError is reported by the caller

    return docker.from_env(timeout=timeout)


def _docker_gateway(attrs: dict[str, Any]) -> str:
    """The host's address on Docker's default bridge: its gateway (dockerd takes the subnet's first host)."""
    for entry in (attrs.get("IPAM") or {}).get("Config") or []:
        if entry.get("Gateway"):
            return str(entry["Gateway"])
        subnet = entry.get("Subnet")
        if subnet and ipaddress.ip_network(subnet).version == 4:
            return str(ipaddress.ip_network(subnet).network_address + 1)
    raise ValueError("Docker's bridge network has no IPv4 subnet")


def probe_docker() -> tuple[str | None, str, bool]:
    """(Docker's gateway address as containers see the host, or None; why; a demo image exists)."""
    try:
        client = _docker_client()
    except ImportError:
        return None, "the docker Python library is not installed", False
    except Exception as exc:
        return (
            None,
            f"no Docker daemon answers ({_first_line(str(exc))}; scripts/start-dockerd.sh starts one)",
            False,
        )
    try:
        client.ping()
        gateway = _docker_gateway(client.networks.get("bridge").attrs)
        has_image = bool(client.images.list(name=DOCKER_REPOSITORY))
    except Exception as exc:
        return (
            None,
            f"the Docker daemon is not usable ({type(exc).__name__}: {_first_line(str(exc))})",
            False,
        )
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return (
        gateway,
        f"a Docker daemon answers; containers reach this host at {gateway} (docker0)",
        has_image,
    )


def choose_backend(wanted: str, say: Callable[[str], None]) -> list[BackendChoice]:
    """The backends to try, best first (``auto``: LXD, Docker, local; otherwise just ``wanted``).

    Raises:
        DemoError: the wanted backend cannot run here.
    """
    if wanted not in BACKEND_CHOICES:
        raise DemoError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, not {wanted!r}")
    local = BackendChoice(
        "local",
        "runner processes on this machine (no isolation; the hostname in job output is this machine's)",
        "127.0.0.1",
        image_ready=True,
    )
    if wanted == "local":
        return [local]
    choices: list[BackendChoice] = []
    if wanted in ("auto", "lxd"):
        address, reason = probe_lxd()
        problem = None
        ready = False
        if address is not None:
            ready = lxd_alias_properties(LXD_ALIAS) is not None
            problem = None if ready else builder_problem()
            reason += f"; image {LXD_ALIAS} " + ("present" if ready else "to be built")
        if address is None or problem is not None:
            why = reason if address is None else f"{reason}, but {problem}"
            if wanted == "lxd":
                raise DemoError(f"--backend lxd: {why}")
            say(f"[dim]not LXD: {why}[/dim]")
        else:
            choices.append(BackendChoice("lxd", reason, address, image_ready=ready))
    if wanted in ("auto", "docker") and not choices:
        gateway, reason, has_image = probe_docker()
        problem = None if gateway is None or has_image else builder_problem()
        if gateway is None or problem is not None:
            why = reason if gateway is None else f"{reason}, but {problem}"
            if wanted == "docker":
                raise DemoError(f"--backend docker: {why}")
            say(f"[dim]not Docker: {why}[/dim]")
        else:
            choices.append(BackendChoice("docker", reason, gateway, image_ready=has_image))
    if wanted == "auto":
        choices.append(local)
    return choices


# ------------------------------------------------------------------------------ parts
class RedisServer:
    """A private redis-server on a free loopback port, its files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DemoError("redis-server is not installed (scripts/dev-setup.sh installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(  # resolved binary, list arguments
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
                self.stop()
                raise DemoError(
                    f"redis-server did not start on port {self.port}: {_first_line(tail)}"
                )
            time.sleep(0.05)
        return self

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def fetch_runner_app(url: str, token: str, directory: Path) -> RunnerBinary:
    """The runner application the emulator's downloads endpoint names, downloaded and sha256-verified."""
    from github_runner_manager.config import GitHubPath
    from github_runner_manager.github import GitHubClient
    from github_runner_manager.runner_binary import RunnerBinaryCache

    github = GitHubClient(url, token, timeout=30)
    try:
        cache = RunnerBinaryCache(directory, github, GitHubPath.parse(ORG))
        return cache.current() or cache.update()
    finally:
        github.close()


# ------------------------------------------------------------------------------ images
def _image_options(binary: RunnerBinary, **overrides: Any) -> ImageBuildOptions:
    from github_runner_manager.image import ImageBuildOptions

    values: dict[str, Any] = {
        "runner_sha256": binary.sha256,
        "runner_tarball": binary.path,
        "runner_version": binary.version,
        "base": BASE,
        "alias_prefix": ALIAS_PREFIX,
        "vm": False,
        "timeout": 1800.0,
    }
    values.update(overrides)
    return ImageBuildOptions(**values)


def _cache_dir_for(key: str) -> Path:
    """The build cache to use: one holding this key's root filesystem (the tests' first), else the
    tests' cache when this machine has one (so the demo and the tests build once), else the builder's."""
    for directory in (TEST_IMAGE_CACHE, BUILDER_CACHE):
        if (directory / "rootfs" / f"{key}.tar").is_file():
            return directory
    return TEST_IMAGE_CACHE if TEST_IMAGE_CACHE.is_dir() else BUILDER_CACHE


def _build(options: ImageBuildOptions, console: Console, what: str) -> Any:
    """Run the image build, showing its steps as they happen."""
    from github_runner_manager.image import ImageBuildError, build_runner_image

    console.print(
        f"  building {what} (cache {options.cache_dir}; a cached root filesystem makes it an import)"
    )
    with console.status(f"image build: starting ({what})") as status:

        def on_line(line: str) -> None:
            if not line.startswith("STEP "):
                return
            parts = line.split(maxsplit=3)
            step, event = parts[1], parts[2] if len(parts) > 2 else ""
            if event == "begin":
                status.update(f"image build: {step} ...")
            else:
                console.print(f"  [dim]image build: {' '.join(parts[1:])}[/dim]")

        try:
            result = build_runner_image(options, on_line=on_line)
        except ImageBuildError as exc:
            raise DemoError(
                f"image build failed: {exc} (log: {options.log_file or 'the builder log'})"
            ) from None
    console.print(f"  built in {result.seconds:.0f}s (cached root filesystem: {result.cached})")
    return result


def prepare_lxd_image(binary: RunnerBinary, console: Console) -> str:
    """The LXD alias of a runner image with this runner app: reused when its cache key matches."""
    from github_runner_manager.image import ImageBuildError, image_cache_key

    options = _image_options(binary)
    try:
        key = image_cache_key(options)
    except ImageBuildError as exc:
        raise DemoError(f"image build: {exc}") from None
    properties = lxd_alias_properties(LXD_ALIAS) or {}
    if properties.get("cache_key") == key:
        console.print(f"  image {LXD_ALIAS} is up to date (cache key {key[:12]}); reusing it")
        return LXD_ALIAS
    cache = _cache_dir_for(key)
    options = dataclasses.replace(options, cache_dir=cache, log_file=cache / "demo-build.log")
    _build(options, console, f"LXD image {LXD_ALIAS}")
    return LXD_ALIAS


def prepare_docker_image(binary: RunnerBinary, console: Console) -> str:
    """A Docker image of the runner root filesystem (``docker import``), reused when it exists."""
    from github_runner_manager.image import ImageBuildError, image_cache_key

    options = _image_options(binary, lxd=False)
    try:
        key = image_cache_key(options)
    except ImageBuildError as exc:
        raise DemoError(f"image build: {exc}") from None
    tag = f"{DOCKER_REPOSITORY}:{key[:12]}"
    client = _docker_client(timeout=900)
    try:
        if client.images.list(name=tag):
            console.print(f"  image {tag} is up to date; reusing it")
            return tag
        cache = _cache_dir_for(key)
        rootfs = cache / "rootfs" / f"{key}.tar"
        if not rootfs.is_file():
            options = dataclasses.replace(
                options, cache_dir=cache, log_file=cache / "demo-build.log"
            )
            result = _build(options, console, "the runner root filesystem")
            rootfs = Path(result.rootfs or rootfs)
        with console.status(f"docker import {rootfs.name} as {tag}"):
            client.api.import_image_from_file(
                str(rootfs), repository=DOCKER_REPOSITORY, tag=key[:12]
            )
        if not client.images.list(name=tag):
            raise DemoError(f"docker import of {rootfs} did not produce {tag}")
        console.print(f"  imported {tag} from {rootfs}")
        return tag
    except DemoError:
        raise
    except Exception as exc:
        raise DemoError(f"preparing the Docker image failed: {_first_line(str(exc))}") from None
    finally:
        with contextlib.suppress(Exception):
            client.close()


# ------------------------------------------------------------------------------ configuration
def manager_config(
    *,
    backend: str,
    image: str | None,
    github_url: str,
    token: str,
    secret: str,
    redis_url: str,
    webhook_port: int,
    prefix: str,
    work: Path,
) -> dict[str, Any]:
    """The manager's configuration mapping for the demo (as a config file would hold it)."""
    registry_name = "fake" if backend == "local" else backend
    groups = []
    for group in GROUPS:
        item: dict[str, Any] = {
            "name": group.name,
            "labels": group.labels,
            "backend": registry_name,
            "min_idle": group.min_idle,
            "max_runners": group.max_runners,
            "cpu": 1,
            "memory": "1GiB",
            "disk": "4GiB",
        }
        if image:
            item["image"] = image
        groups.append(item)
    backends: dict[str, dict[str, Any]] = {
        "lxd": {},
        "docker": {"command": DOCKER_COMMAND},
        "fake": {"mode": "local", "work_dir": str(work / "runners")},
    }
    return {
        "github": {"url": github_url, "token": token, "paths": [ORG], "poll_interval": "10s",
                   "timeout": 15},
        "webhook": {"listen": f"127.0.0.1:{webhook_port}", "path": "/webhook", "secret": secret},
        "redis": {"url": redis_url, "key_prefix": "ghrm-demo"},
        "reconcile_interval": "5s",
        "register_timeout": "180s",
        "offline_timeout": "60s",
        "concurrency": 8,
        "prefix": prefix,
        "unit": "demo",
        "state_dir": str(work / "state"),
        "metrics_listen": None,
        "runner_groups": groups,
        "backends": {registry_name: backends[registry_name]},
    }  # fmt: skip


# ------------------------------------------------------------------------------ the run
class Demo:
    """One run of the demo; :meth:`run` returns the exit status and always cleans up."""

    def __init__(
        self,
        *,
        jobs: int = 12,
        backend: str = "auto",
        json_path: Path | None = None,
        timeout: float = 1800.0,
        log_file: Path | None = None,
        log_level: str = "info",
        console: Console | None = None,
    ) -> None:
        if jobs < 1:
            raise DemoError("--jobs must be at least 1")
        self.jobs = jobs
        self.wanted = backend
        self.json_path = json_path
        self.timeout = timeout
        self.log_level = log_level
        if console is None:
            console = Console(highlight=False)
            if not console.is_terminal:  # logs and pipes: wide enough for the runner names
                console = Console(highlight=False, width=120)
        self.console = console
        self.err = Console(stderr=True, highlight=False)
        self.result = DemoResult(jobs_total=jobs)
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="ghrm-demo-"))
        self.log_file = log_file or self.tmp / "demo.log"
        self.prefix = f"demo{secrets.token_hex(2)}"
        self.token = f"ghp_demo{secrets.token_hex(16)}"
        self.secret = secrets.token_hex(20)
        self.redis: RedisServer | None = None
        self.emulator: Any = None
        self.manager: RunnerManager | None = None
        self.backend_name = ""
        self.stop = threading.Event()
        self.service_thread: threading.Thread | None = None
        self.service_error: list[BaseException] = []
        self.job_ids: list[int] = []
        self.job_group: dict[int, str] = {}
        self._log_handler: logging.Handler | None = None
        self._instances: dict[str, int] = {}
        self._instances_at = 0.0
        self._cleaning = False
        self._interrupts = 0

    # -------------------------------------------------------------------------- entry point
    def run(self) -> int:
        """Run the demo; returns the exit status (0 ok, 1 failed, 130 interrupted)."""
        self._setup_logging()
        previous = self._install_signals()
        try:
            try:
                self._main()
            except DemoError as exc:
                self.result.error = str(exc)
                self.err.print(f"github-runner-manager demo: error: {exc}", markup=False)
            except KeyboardInterrupt:
                self.result.interrupted = True
                self.err.print("github-runner-manager demo: interrupted; cleaning up", markup=False)
            except Exception as exc:  # one line for the operator; the details go to the log
                logger.exception("demo failed")
                self.result.error = f"unexpected {type(exc).__name__}: {exc}"
                self.err.print(
                    f"github-runner-manager demo: error: {self.result.error}", markup=False
                )
            finally:
                self._cleanup()
            self._summary()
        finally:
            self._restore_signals(previous)
            self._teardown_logging()
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self.result.interrupted:
            return 130
        return 0 if self.result.ok else 1

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _check_deadline(self, what: str) -> None:
        if self._remaining() <= 0:
            self.result.timed_out = True
            raise DemoError(f"--timeout {self.timeout:.0f}s reached {what}")

    def _say(self, text: str) -> None:
        self.console.print(text)

    def _main(self) -> None:
        c = self.console
        c.print(f"[bold]github-runner-manager demo[/bold]: {self.jobs} jobs over two label sets")
        candidates = choose_backend(self.wanted, self._say)
        choice = candidates[0]
        c.print(f"[bold]backend[/bold]: {choice.name} -- {choice.reason}")
        c.print("[bold]starting[/bold] a private redis-server and the GitHub emulator")
        self.redis = RedisServer(self.tmp / "redis").start()
        webhook_port = _free_port()
        self._start_emulator(choice.host, webhook_port)
        c.print(f"  redis {self.redis.url}; GitHub emulator {self.emulator.url} "
                f"(runners reach it at {choice.host}); webhooks to 127.0.0.1:{webhook_port}")  # fmt: skip
        binary = fetch_runner_app(
            self.emulator.url, self.token, self.tmp / "state" / "runner-binary"
        )
        c.print(
            f"  runner application {binary.version} downloaded, sha256 {binary.sha256[:12]}... verified"
        )
        image: str | None = None
        while True:
            self._check_deadline("before the image was ready")
            try:
                if choice.name == "lxd":
                    c.print("[bold]image[/bold]: LXD container image")
                    image = prepare_lxd_image(binary, c)
                elif choice.name == "docker":
                    c.print("[bold]image[/bold]: Docker image")
                    image = prepare_docker_image(binary, c)
                break
            except DemoError as exc:
                if self.wanted != "auto" or choice.name == "local":
                    raise
                fallback = candidates[-1]
                c.print(
                    f"[yellow]{choice.name} cannot be used: {exc}; falling back to {fallback.name}[/yellow]"
                )
                # local runners reach the emulator on any address of this host
                choice = dataclasses.replace(fallback, host=choice.host)
        self.backend_name = choice.name
        self.result.backend = choice.name
        self.result.backend_reason = choice.reason
        self.result.image = image
        self._start_manager(choice, image, webhook_port)
        self._serve_jobs()

    def _start_emulator(self, host: str, webhook_port: int) -> None:
        from github_emulator.testing import start_emulator

        options: dict[str, Any] = {
            "orgs": [ORG],
            "repos": list(REPOS),
            "tokens": [self.token],
            "hooks": [{"url": f"http://127.0.0.1:{webhook_port}/webhook", "secret": self.secret,
                       "org": ORG}],
        }  # fmt: skip
        if host != "127.0.0.1":
            options["agent_host"] = host
        try:
            self.emulator = start_emulator(host=host, port=0, **options)
        except OSError as exc:
            raise DemoError(
                f"the GitHub emulator cannot listen on {host}: {exc.strerror or exc}"
            ) from None

    def _start_manager(self, choice: BackendChoice, image: str | None, webhook_port: int) -> None:
        from github_runner_manager.config import ConfigError, parse_config
        from github_runner_manager.manager import RunnerManager
        from github_runner_manager.service import ManagerService

        data = manager_config(
            backend=choice.name, image=image, github_url=self.emulator.url, token=self.token,
            secret=self.secret, redis_url=self.redis.url if self.redis else "", webhook_port=webhook_port,
            prefix=self.prefix, work=self.tmp,
        )  # fmt: skip
        try:
            config = parse_config(data)
        except ConfigError as exc:
            raise DemoError(f"the demo's manager configuration is invalid: {exc}") from None
        self.manager = manager = RunnerManager(config)
        if choice.name != "local":
            from github_runner_manager.backends.base import BackendError

            try:
                manager.validate()
            except BackendError as exc:
                raise DemoError(f"backend {choice.name}: {exc}") from None
        service = ManagerService(manager, sweep_interval=1.0, shutdown_grace=15.0)

        def serve() -> None:
            try:
                service.run(self.stop)
            except BaseException as exc:  # reported by the main thread
                self.service_error.append(exc)
                self.stop.set()

        self.service_thread = threading.Thread(target=serve, name="ghrm-demo-service", daemon=True)
        self.service_thread.start()

        def listening() -> bool:
            self._check_service()
            try:
                return requests.get(f"http://127.0.0.1:{webhook_port}/healthz", timeout=2).ok
            except requests.RequestException:
                return False

        _wait(listening, 30, "the manager's webhook listener")
        groups = ", ".join(
            f"{g.name} (labels {g.label}, min_idle {g.min_idle}, max {g.max_runners})"
            for g in GROUPS
        )
        self.console.print(f"[bold]manager[/bold] serving: prefix {self.prefix}, groups {groups}")

    def _check_service(self) -> None:
        if self.service_error:
            exc = self.service_error[0]
            raise DemoError(f"the manager service stopped: {type(exc).__name__}: {exc}")

    # -------------------------------------------------------------------------- jobs and live view
    def _serve_jobs(self) -> None:
        assert self.emulator is not None
        warm = next(g for g in GROUPS if g.min_idle)
        with self._live() as update:

            def pool_ready() -> bool:
                self._check_service()
                self._check_deadline(f"while {warm.min_idle} warm {warm.name} runners started")
                update(f"waiting for {warm.min_idle} warm {warm.name} runners")
                return self._idle_online(warm.name) >= warm.min_idle

            _wait(pool_ready, max(1.0, self._remaining()), "the warm pool", interval=0.5)
            self._say(f"[bold]warm pool ready[/bold]: {warm.min_idle} idle {warm.name} runners online; "
                      f"queueing {self.jobs} jobs")  # fmt: skip
            for index in range(self.jobs):
                group = GROUPS[index % len(GROUPS)]
                job_id = self.emulator.control.queue_job(
                    REPOS[index % len(REPOS)],
                    group.labels,
                    STEPS,
                    name=f"demo-{index + 1}-{group.name}",
                )
                self.job_ids.append(job_id)
                self.job_group[job_id] = group.name

            def all_done() -> bool:
                self._check_service()
                self._check_deadline(f"with {self._open_jobs()} jobs not completed")
                update("running jobs")
                return self._open_jobs() == 0

            _wait(all_done, max(1.0, self._remaining()), "the jobs", interval=0.5)
            update("all jobs completed")

    def _open_jobs(self) -> int:
        return sum(1 for job in self._jobs() if job.get("status") != "completed")

    def _jobs(self) -> list[dict[str, Any]]:
        if self.emulator is None or not self.job_ids:
            return []
        wanted = set(self.job_ids)
        return [j for j in self.emulator.control.jobs() if j["id"] in wanted]

    def _idle_online(self, group: str) -> int:
        start = f"{self.prefix}-{group}-"
        return sum(
            1
            for r in self.emulator.control.runners()
            if r["name"].startswith(start) and r["status"] == "online" and not r["busy"]
            and not r.get("job_id")
        )  # fmt: skip

    def _instance_counts(self, fresh: bool = False) -> dict[str, int]:
        """Backend instances per group (refreshed every 2 s: listing LXD is not free)."""
        if self.manager is None:
            return {}
        if not fresh and time.monotonic() - self._instances_at < 2.0:
            return self._instances
        from github_runner_manager.backends.base import TAG_GROUP

        counts: dict[str, int] = {}
        with contextlib.suppress(Exception):
            backend = self.manager.backend(
                "fake" if self.backend_name == "local" else self.backend_name
            )
            for inst in backend.list(prefix=f"{self.prefix}-"):
                group = inst.tags.get(TAG_GROUP, "?")
                counts[group] = counts.get(group, 0) + 1
            self._instances = counts
            self._instances_at = time.monotonic()
        return self._instances

    def snapshot(self, phase: str) -> Snapshot:
        records: dict[str, dict[str, int]] = {}
        failures = 0
        if self.manager is not None:
            with contextlib.suppress(Exception):
                records = self.manager.store.counts()
                failures = self.manager.store.counters().get("runner_create_failures", 0)
        return Snapshot(
            elapsed=time.monotonic() - self.started,
            records=records,
            instances=self._instance_counts(fresh=phase == "done"),
            jobs=self._jobs(),
            job_group=dict(self.job_group),
            create_failures=failures,
            phase=phase,
        )

    @contextlib.contextmanager
    def _live(self) -> Iterator[Callable[[str], None]]:
        """A live table on a terminal; a progress line every few seconds otherwise."""
        if self.console.is_terminal:
            with Live(console=self.console, refresh_per_second=4, transient=False) as live:
                last = [0.0]

                def update(phase: str) -> None:
                    if time.monotonic() - last[0] >= 0.5:
                        last[0] = time.monotonic()
                        live.update(render_live(self.snapshot(phase), self.backend_name))

                yield update
                live.update(render_live(self.snapshot("done"), self.backend_name))
            return
        state = {"line": "", "at": 0.0}

        def progress(phase: str) -> None:
            if time.monotonic() - state["at"] < 5.0:  # type: ignore[operator]
                return
            line = progress_line(self.snapshot(phase))
            if line != state["line"]:
                self.console.print(line, markup=False)
                state["line"] = line
            state["at"] = time.monotonic()

        yield progress
        self.console.print(render_live(self.snapshot("done"), self.backend_name))

    # -------------------------------------------------------------------------- clean-up
    def _cleanup(self) -> None:
        """Stop the service, flush every runner, count what is left, stop the servers."""
        self._cleaning = True
        c = self.console
        if self.emulator is not None:
            self._collect_jobs()
        if self.service_thread is not None:
            c.print("[bold]cleaning up[/bold]: stopping the manager service")
            self.stop.set()
            self.service_thread.join(timeout=60)
        if self.manager is not None:
            self._flush()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self._collect_stats()
        if self.manager is not None:
            with contextlib.suppress(Exception):
                self.manager.close()
        if self.emulator is not None:
            with contextlib.suppress(Exception):
                self.emulator.stop()
        if self.redis is not None:
            self.redis.stop()
        c.print("  servers stopped, temporary files removed")

    def _flush(self) -> None:
        assert self.manager is not None
        manager = self.manager
        self.console.print("  removing every runner (busy ones too)")
        deadline = time.monotonic() + 120
        removed = 0
        left = self._left()
        while sum(left.values()) and time.monotonic() < deadline:
            try:
                removed += manager.flush(flush_busy=True)
            except Exception as exc:
                logger.warning("flush failed: %s", exc)
                time.sleep(1)
            left = self._left()
            if sum(left.values()):
                time.sleep(0.5)
        if left.get("instances"):
            # the last resort for what the manager could not remove: the backend's own sweep by prefix
            with contextlib.suppress(Exception):
                name = "fake" if self.backend_name == "local" else self.backend_name
                manager.backend(name).remove_all(prefix=f"{self.prefix}-")
            left = self._left()
        self.result.runners_left = sum(left.values())
        self.result.runners_left_detail = left
        self.console.print(f"  {removed} runners removed; left: {left['instances']} instances, "
                           f"{left['github']} GitHub runners, {left['records']} Redis records")  # fmt: skip

    def _left(self) -> dict[str, int]:
        """Runners of this demo still somewhere: backend instances, GitHub registrations, Redis records."""
        assert self.manager is not None
        left = {"instances": 0, "github": 0, "records": 0}
        if self.backend_name:
            name = "fake" if self.backend_name == "local" else self.backend_name
            with contextlib.suppress(Exception):
                left["instances"] = len(self.manager.backend(name).list(prefix=f"{self.prefix}-"))
        with contextlib.suppress(Exception):
            left["github"] = sum(
                1
                for r in self.emulator.control.runners()
                if r["name"].startswith(f"{self.prefix}-")
            )
        with contextlib.suppress(Exception):
            left["records"] = len(self.manager.store.list_runners())
        return left

    def _collect_jobs(self) -> None:
        with contextlib.suppress(Exception):
            jobs = self._jobs()
            self.result.jobs = [job_summary(j, self.job_group.get(j["id"], "?")) for j in jobs]
            completed = [j for j in jobs if j.get("status") == "completed"]
            self.result.jobs_completed = len(completed)
            self.result.jobs_succeeded = sum(
                1 for j in completed if j.get("conclusion") == "success"
            )
            pickups = [p for p in (j["pickup_s"] for j in self.result.jobs) if p is not None]
            self.result.pickup_p50_s = percentile(pickups, 50)
            self.result.pickup_p95_s = percentile(pickups, 95)
            self.result.pickup_max_s = max(pickups) if pickups else None
            for group in GROUPS:
                values = [j["pickup_s"] for j in self.result.jobs
                          if j["group"] == group.name and j["pickup_s"] is not None]  # fmt: skip
                self.result.pickup_by_group[group.name] = {
                    "jobs": len(values),
                    "p50_s": percentile(values, 50),
                    "p95_s": percentile(values, 95),
                    "max_s": max(values) if values else None,
                }

    def _collect_stats(self) -> None:
        stats = self.emulator.control.stats()
        self.result.github_requests = int(stats.get("requests_total") or 0)
        self.result.rate_limit_units = int(stats.get("rate_limit_units_total") or 0)
        self.result.github_not_modified = int(stats.get("not_modified") or 0)
        self.result.webhook_deliveries = int(stats.get("webhook_deliveries") or 0)

    # -------------------------------------------------------------------------- output
    def _summary(self) -> None:
        self.result.duration_s = round(time.monotonic() - self.started, 1)
        self.console.print(render_summary(self.result))
        if self.json_path is not None:
            try:
                self.json_path.parent.mkdir(parents=True, exist_ok=True)
                self.json_path.write_text(
                    json.dumps(dataclasses.asdict(self.result), indent=2) + "\n"
                )
                self.console.print(f"summary written to {self.json_path}")
            except OSError as exc:
                self.result.error = self.result.error or f"cannot write {self.json_path}: {exc}"
                self.err.print(f"github-runner-manager demo: error: cannot write {self.json_path}: "
                               f"{exc.strerror or exc}", markup=False)  # fmt: skip
        if not self.result.ok and not self.result.interrupted:
            tail = self._log_tail()
            if tail:
                self.err.print("last warnings of the manager's log:", markup=False)
                for line in tail:
                    self.err.print(f"  {line}", markup=False)

    def _log_tail(self, lines: int = 12) -> list[str]:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in text if " WARNING " in line or " ERROR " in line][-lines:]

    # -------------------------------------------------------------------------- logging, signals
    def _setup_logging(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(getattr(logging, self.log_level.upper(), logging.INFO))
        for noisy in ("urllib3", "werkzeug", "ws4py", "docker"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._log_handler = handler

    def _teardown_logging(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if self._cleaning:
                self._interrupts += 1
                if self._interrupts >= 2:
                    raise KeyboardInterrupt
                self.err.print(
                    "cleaning up; interrupt once more to abandon the clean-up", markup=False
                )
                return
            raise KeyboardInterrupt

        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------ rendering
def job_summary(job: dict[str, Any], group: str) -> dict[str, Any]:
    """One job of the summary: who ran it, how fast it was picked up, what its first step printed."""
    queued, started, completed = (
        job.get("queued_at"),
        job.get("started_at"),
        job.get("completed_at"),
    )
    hello = ""
    for step in job.get("steps") or []:
        lines = (step.get("output") or "").strip().splitlines()
        if step.get("name") == "hello" and lines:
            hello = lines[-1]
    return {
        "id": job["id"],
        "group": group,
        "status": job.get("status"),
        "conclusion": job.get("conclusion"),
        "runner": job.get("runner_name"),
        "pickup_s": round(started - queued, 3) if started and queued else None,
        "duration_s": round(completed - started, 3) if completed and started else None,
        "hello": hello or "",
    }


def _job_counts(snap: Snapshot, group: str | None) -> tuple[int, int, int, int, list[float]]:
    queued = running = done = failed = 0
    pickups: list[float] = []
    for job in snap.jobs:
        if group is not None and snap.job_group.get(job["id"]) != group:
            continue
        status = job.get("status")
        if status == "completed":
            done += 1
            failed += job.get("conclusion") != "success"
        elif status == "in_progress":
            running += 1
        else:
            queued += 1
        if job.get("started_at") and job.get("queued_at"):
            pickups.append(job["started_at"] - job["queued_at"])
    return queued, running, done, failed, pickups


def render_live(snap: Snapshot, backend: str) -> Group:
    """The live view: runners per group and state, and jobs with their pickup latency."""
    runners = Table(title=f"runners ({backend})", title_justify="left")
    for column in (
        "group",
        "min idle/max",
        "creating",
        "idle",
        "busy",
        "done",
        "deleting",
        "instances",
    ):
        runners.add_column(column, justify="left" if column == "group" else "right")
    jobs = Table(title="jobs", title_justify="left")
    for column in (
        "group",
        "queued",
        "running",
        "done",
        "failed",
        "pickup p50",
        "pickup p95",
        "pickup max",
    ):
        jobs.add_column(column, justify="left" if column == "group" else "right")
    for group in GROUPS:
        states = snap.records.get(group.name, {})
        runners.add_row(
            f"{group.name} ({group.label})", f"{group.min_idle}/{group.max_runners}",
            str(states.get("creating", 0)), str(states.get("idle", 0)), str(states.get("busy", 0)),
            str(states.get("done", 0)), str(states.get("deleting", 0)), str(snap.instances.get(group.name, 0)),
        )  # fmt: skip
        q, r, d, f, pickups = _job_counts(snap, group.name)
        jobs.add_row(group.name, str(q), str(r), str(d), str(f), _secs(percentile(pickups, 50)),
                     _secs(percentile(pickups, 95)), _secs(max(pickups) if pickups else None))  # fmt: skip
    q, r, d, f, pickups = _job_counts(snap, None)
    jobs.add_row("all", str(q), str(r), str(d), str(f), _secs(percentile(pickups, 50)),
                 _secs(percentile(pickups, 95)), _secs(max(pickups) if pickups else None), style="bold")  # fmt: skip
    footer = Text(f"{snap.phase} -- {snap.elapsed:.0f}s elapsed"
                  + (f"; failed runner creates: {snap.create_failures}" if snap.create_failures else ""),
                  style="dim")  # fmt: skip
    return Group(runners, jobs, footer)


def progress_line(snap: Snapshot) -> str:
    """One line of progress (for output that is not a terminal)."""
    parts = []
    for group in GROUPS:
        states = snap.records.get(group.name, {})
        shown = " ".join(f"{n} {s}" for s, n in sorted(states.items()) if n) or "none"
        parts.append(f"{group.name}: {shown}")
    q, r, d, f, pickups = _job_counts(snap, None)
    return (
        f"[{snap.elapsed:4.0f}s] {snap.phase}; runners {'; '.join(parts)} | jobs {q} queued, "
        f"{r} running, {d} done ({f} failed), pickup p50 {_secs(percentile(pickups, 50))}"
    )


def render_summary(result: DemoResult) -> Group:
    """The end-of-run summary: per-job lines and the headline figures."""
    parts: list[Any] = []
    if result.jobs:
        jobs = Table(title="jobs", title_justify="left")
        width = max(len(job["runner"] or "-") for job in result.jobs)
        for column in ("job", "group", "runner", "pickup", "took", "result", "first step printed"):
            jobs.add_column(
                column,
                justify="right" if column in ("job", "pickup", "took") else "left",
                min_width=width if column == "runner" else None,
                overflow="fold",
            )
        for job in result.jobs:
            jobs.add_row(
                str(job["id"]), job["group"], job["runner"] or "-", _secs(job["pickup_s"]),
                _secs(job["duration_s"]), job["conclusion"] or job["status"] or "-", job["hello"],
            )  # fmt: skip
        parts.append(jobs)
    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row(
        "backend", f"{result.backend or '-'}" + (f" (image {result.image})" if result.image else "")
    )
    table.add_row(
        "jobs done",
        f"{result.jobs_completed}/{result.jobs_total} ({result.jobs_succeeded} succeeded)",
    )
    table.add_row("pickup p50 / p95 / max",
                  f"{_secs(result.pickup_p50_s)} / {_secs(result.pickup_p95_s)} / {_secs(result.pickup_max_s)}")  # fmt: skip
    for name, figures in result.pickup_by_group.items():
        group = next((g for g in GROUPS if g.name == name), None)
        kind = "warm pool" if group and group.min_idle else "on demand"
        table.add_row(
            f"  {name} ({kind})",
            f"p50 {_secs(figures.get('p50_s'))}, p95 {_secs(figures.get('p95_s'))}",
        )  # type: ignore[arg-type]
    table.add_row("GitHub calls spent", f"{result.github_requests} requests, {result.rate_limit_units} "
                  f"rate-limit units ({result.github_not_modified} answered 304, free)")  # fmt: skip
    table.add_row("webhook deliveries", str(result.webhook_deliveries))
    left = "-" if result.runners_left is None else str(result.runners_left)
    if result.runners_left_detail:
        d = result.runners_left_detail
        left += f" ({d.get('instances', 0)} instances, {d.get('github', 0)} GitHub runners, {d.get('records', 0)} Redis records)"
    table.add_row("runners left", left)
    table.add_row("took", f"{result.duration_s:.0f}s")
    verdict = "OK" if result.ok else ("INTERRUPTED" if result.interrupted else "FAILED")
    if result.error:
        verdict += f": {result.error}"
    table.add_row("result", Text(verdict, style="bold green" if result.ok else "bold red"))
    parts.append(table)
    return Group(*parts)


def run_demo(
    *,
    jobs: int = 12,
    backend: str = "auto",
    json_path: Path | None = None,
    timeout: float = 1800.0,
    log_file: Path | None = None,
    log_level: str = "info",
) -> int:
    """Run the demo (see the module docstring); returns the process exit status."""
    try:
        demo = Demo(jobs=jobs, backend=backend, json_path=json_path, timeout=timeout,
                    log_file=log_file, log_level=log_level)  # fmt: skip
    except DemoError as exc:
        Console(stderr=True).print(f"github-runner-manager demo: error: {exc}", markup=False)
        return 1
    return demo.run()
