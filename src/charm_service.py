# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""What the charm does on the machine itself: files, packages, services, the runner image.

The charm's `RealManager` (charm_manager.py) decides *what* must happen; this module knows *how*:

* `Layout`: where everything lives under the unit's state directory (injectable for tests);
* `write_private_file`: atomic writes with the mode set before any byte lands (config holds secrets);
* `apt_install`, `ensure_lxd`: package installation through an injectable command runner (list
  arguments, timeouts, never a shell);
* `Service`: the manager (and the embedded redis-server) as a supervised service: a systemd unit
  where systemd is PID 1 (`SystemdService`), otherwise a small supervisor process of ours with a
  pidfile that restarts its child when it dies (`SupervisedProcess`);
* `ImageInputs` / `build_image`: building the runner image with the charm's inputs (base image,
  Docker Hub mirror), importing it into Docker when that backend is used, and removing images.

It never imports `ops`; run as a script it offers `supervise` (the supervisor process) and
`build-image` (what the image rebuild cron entry runs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

DEFAULT_BASE_DIR = Path("/var/lib/github-runner")
DEFAULT_LOG_DIR = Path("/var/log/github-runner")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_CRON_PATH = Path("/etc/cron.d/github-runner-image")
DEFAULT_LOGROTATE_PATH = Path("/etc/logrotate.d/github-runner")
MANAGER_SERVICE = "github-runner-manager"
REDIS_SERVICE = "github-runner-redis"
#: The Debian/Ubuntu package's own unit, used for the embedded Redis where systemd runs.
DISTRO_REDIS_UNIT = "redis-server"
#: Backends whose runner image the charm builds on the unit (LXD imports it, Docker gets the rootfs).
IMAGE_BACKENDS = frozenset({"lxd", "docker"})
#: The image builder's alias prefix; the image is `github-runner-<distro>-<release>` (CharmState.image).
IMAGE_ALIAS_PREFIX = "github-runner"
#: Packages each backend needs on the unit (LXD itself is handled by `ensure_lxd`).
BACKEND_PACKAGES: Mapping[str, tuple[str, ...]] = {
    "lxd": ("nftables", "mmdebstrap", "qemu-utils", "e2fsprogs", "curl", "cron"),
    "docker": ("docker.io", "mmdebstrap", "qemu-utils", "e2fsprogs", "curl", "cron"),
}
APT_TIMEOUT = 900.0
COMMAND_TIMEOUT = 120.0
LXD_PRESEED = """\
config: {}
networks:
- name: lxdbr0
  type: bridge
  config: {ipv4.address: auto, ipv4.nat: "true", ipv6.address: none}
storage_pools:
- name: default
  driver: dir
  config: {source: %(pool_dir)s}
profiles:
- name: default
  devices:
    root: {path: /, pool: default, type: disk}
    eth0: {name: eth0, network: lxdbr0, type: nic}
"""


class CommandError(Exception):
    """A command failed or timed out; the message names it and ends with its last error line."""


class CommandRunner(Protocol):
    """Runs one command (list arguments, no shell) and returns its completed process."""

    def __call__(
        self,
        args: Sequence[str],
        *,
        timeout: float = COMMAND_TIMEOUT,
        input_text: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]: ...


def run_command(
    args: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `args` with a timeout; with `check`, raise `CommandError` on failure.

    The command line is logged (it never carries a secret: secrets travel in files).
    """
    argv = [str(arg) for arg in args]
    logger.info("running %s", shlex.join(argv))
    try:
        completed = subprocess.run(
            argv,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandError(f"{shlex.join(argv[:3])} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise CommandError(f"{argv[0]} could not run: {exc.strerror or exc}") from None
    if check and completed.returncode != 0:
        lines = (completed.stderr or completed.stdout or "").strip().splitlines()
        detail = f": {lines[-1]}" if lines else ""
        raise CommandError(
            f"{shlex.join(argv[:3])} failed with exit code {completed.returncode}{detail}"
        )
    return completed


# ----------------------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the charm keeps things on the unit.

    Attributes:
        base_dir: the unit's state directory (config, manager state, pidfiles, charm bookkeeping).
        log_dir: where the manager's (and the supervisor's) logs go.
        unit_dir: where systemd unit files are written.
        cron_path: the image rebuild cron entry.
        logrotate_path: the logrotate entry for `log_dir`.
    """

    base_dir: Path = DEFAULT_BASE_DIR
    log_dir: Path = DEFAULT_LOG_DIR
    unit_dir: Path = DEFAULT_UNIT_DIR
    cron_path: Path = DEFAULT_CRON_PATH
    logrotate_path: Path = DEFAULT_LOGROTATE_PATH

    @classmethod
    def under(cls, root: Path) -> Layout:
        """Everything below `root` (tests): nothing outside it is touched."""
        return cls(
            base_dir=root / "state",
            log_dir=root / "log",
            unit_dir=root / "systemd",
            cron_path=root / "cron.d" / "github-runner-image",
            logrotate_path=root / "logrotate.d" / "github-runner",
        )

    @property
    def config_file(self) -> Path:
        """The manager's config file (mode 0600: it holds the token)."""
        return self.base_dir / "manager.yaml"

    @property
    def state_dir(self) -> Path:
        """The manager's own `state_dir` (runner binary cache, images, fake backend state)."""
        return self.base_dir / "manager"

    @property
    def charm_state_file(self) -> Path:
        """The charm's bookkeeping: installed packages, image inputs, health (never a secret)."""
        return self.base_dir / "charm-state.json"

    @property
    def redis_dir(self) -> Path:
        """The embedded redis-server's data directory (when the charm supervises it)."""
        return self.base_dir / "redis"

    def pidfile(self, service: str) -> Path:
        """The supervisor's pidfile of `service` (without systemd)."""
        return self.base_dir / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        """Where `service` writes its output."""
        return self.log_dir / f"{service}.log"


def write_private_file(path: Path, text: str, mode: int = 0o600) -> bool:
    """Write `text` atomically with `mode` set before any content is written.

    Returns:
        Whether the content changed (an identical file is left alone).
    """
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o777) == mode:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; `{}` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def systemd_is_init() -> bool:
    """True when systemd is PID 1 (so services are systemd units)."""
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


# --------------------------------------------------------------------------------- packages
def apt_install(packages: Iterable[str], run: CommandRunner = run_command) -> list[str]:
    """Install the packages that are missing with apt-get; returns the ones installed.

    Raises:
        CommandError: apt-get failed (the message ends with its last error line).
    """
    wanted = sorted(set(packages))
    missing = [pkg for pkg in wanted if not _dpkg_installed(pkg, run)]
    if not missing:
        return []
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-q"], timeout=APT_TIMEOUT, env=env)
    run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        timeout=APT_TIMEOUT,
        env=env,
    )
    return missing


def _dpkg_installed(package: str, run: CommandRunner) -> bool:
    result = run(["dpkg-query", "-W", "-f=${Status}", package], check=False, timeout=30)
    return result.returncode == 0 and "install ok installed" in (result.stdout or "")


def ensure_lxd(pool_dir: Path, run: CommandRunner = run_command) -> bool:
    """Install LXD (the snap on Ubuntu, the package elsewhere) and initialise it once.

    The preseed makes the `lxdbr0` bridge (NAT, no IPv6), a `dir` storage pool under `pool_dir`
    and a default profile using both; an LXD that already has a storage pool is left alone.

    Returns:
        Whether LXD was initialised now.
    """
    if shutil.which("lxd") is None and shutil.which("lxc") is None:
        if _is_ubuntu() and shutil.which("snap"):
            run(["snap", "install", "lxd"], timeout=APT_TIMEOUT)
        else:
            apt_install(["lxd", "nftables"], run)
    run(["lxd", "waitready", "--timeout", "120"], timeout=150)
    pools = run(["lxc", "query", "/1.0/storage-pools"], timeout=60)
    try:
        initialised = bool(json.loads(pools.stdout or "[]"))
    except ValueError:
        initialised = False
    if initialised:
        return False
    pool_dir.mkdir(parents=True, exist_ok=True)
    run(["lxd", "init", "--preseed"], input_text=LXD_PRESEED % {"pool_dir": pool_dir}, timeout=300)
    return True


def _is_ubuntu() -> bool:
    try:
        return "ID=ubuntu" in Path("/etc/os-release").read_text()
    except OSError:
        return False


# ---------------------------------------------------------------------------------- services
class Service(Protocol):
    """A long-running command the charm keeps alive."""

    name: str

    def install(self, command: Sequence[str], env: Mapping[str, str]) -> bool:
        """Record how the service runs; True when that changed (a restart is then due)."""

    def start(self) -> None:
        """Start it if it is not running."""

    def restart(self) -> None:
        """Stop it if it runs, then start it."""

    def stop(self) -> None:
        """Stop it; nothing happens when it is not running."""

    def running(self) -> bool:
        """Whether it is running now."""

    def remove(self) -> None:
        """Stop it and remove every trace of it (unit file, pidfile)."""


class SystemdService:
    """A systemd unit `NAME.service` written by the charm (`Restart=always`).

    `KillMode=process`: stopping the manager must not kill what it started (runner processes of
    the fake backend, an image build): they belong to the fleet and are found again on restart.
    """

    def __init__(
        self,
        name: str,
        layout: Layout,
        run: CommandRunner = run_command,
        description: str = "",
        after: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.layout = layout
        self.run = run
        self.description = description or name
        self.after = tuple(after)

    @property
    def unit_file(self) -> Path:
        """The unit file's path."""
        return self.layout.unit_dir / f"{self.name}.service"

    @property
    def env_file(self) -> Path:
        """The service's environment (mode 0600: a proxy URL may carry credentials)."""
        return self.layout.base_dir / f"{self.name}.env"

    def render(self, command: Sequence[str], env: Mapping[str, str]) -> str:
        """The unit file's text (the environment goes to `env_file`)."""
        del env
        after = " ".join(("network-online.target", *self.after))
        lines = [
            "# Written by the github-runner charm; changes are overwritten.",
            "[Unit]",
            f"Description={self.description}",
            f"After={after}",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={shlex.join(command)}",
            f"EnvironmentFile={self.env_file}",
            "Restart=always",
            "RestartSec=5",
            "KillMode=process",
            "TimeoutStopSec=60",
            f"StandardOutput=append:{self.layout.log_file(self.name)}",
            "StandardError=inherit",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        return "\n".join(lines)

    def install(self, command: Sequence[str], env: Mapping[str, str]) -> bool:
        self.layout.log_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
        changed = write_private_file(self.env_file, lines)
        changed = (
            write_private_file(self.unit_file, self.render(command, env), mode=0o644) or changed
        )
        if changed:
            self.run(["systemctl", "daemon-reload"])
            self.run(["systemctl", "enable", f"{self.name}.service"])
        return changed

    def start(self) -> None:
        self.run(["systemctl", "start", f"{self.name}.service"])

    def restart(self) -> None:
        self.run(["systemctl", "restart", f"{self.name}.service"], timeout=120)

    def stop(self) -> None:
        self.run(["systemctl", "stop", f"{self.name}.service"], check=False, timeout=120)

    def running(self) -> bool:
        result = self.run(["systemctl", "is-active", f"{self.name}.service"], check=False)
        return (result.stdout or "").strip() == "active"

    def remove(self) -> None:
        self.run(
            ["systemctl", "disable", "--now", f"{self.name}.service"], check=False, timeout=120
        )
        self.env_file.unlink(missing_ok=True)
        if self.unit_file.exists():
            self.unit_file.unlink()
            self.run(["systemctl", "daemon-reload"], check=False)


#: What a supervised service inherits from the hook's environment (the rest comes from its spec).
_INHERITED_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"})


def proxy_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The model's proxy settings (`JUJU_CHARM_HTTP_PROXY`, ...) as the usual variables."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for juju, name in (
        ("JUJU_CHARM_HTTP_PROXY", "http_proxy"),
        ("JUJU_CHARM_HTTPS_PROXY", "https_proxy"),
        ("JUJU_CHARM_NO_PROXY", "no_proxy"),
    ):
        value = environ.get(juju, "")
        if value:
            env[name] = env[name.upper()] = value
    return env


class SupervisedProcess:
    """The service as a process tree of ours, for machines where systemd is not PID 1.

    `python3 charm_service.py supervise` runs the command, restarts it (with backoff) whenever it
    exits, and stops it on SIGTERM. Its pidfile holds its pid and start time, so a pid reused by
    another process is never taken for it. The command line and environment are kept in
    `NAME.json` next to the pidfile.
    """

    def __init__(self, name: str, layout: Layout, python: str = sys.executable) -> None:
        self.name = name
        self.layout = layout
        self.python = python

    @property
    def spec_file(self) -> Path:
        """How the service runs (command and environment; never a secret)."""
        return self.layout.base_dir / f"{self.name}.json"

    def install(self, command: Sequence[str], env: Mapping[str, str]) -> bool:
        spec = json.dumps({"command": list(command), "env": dict(env)}, indent=1, sort_keys=True)
        return write_private_file(self.spec_file, spec + "\n")

    def pid(self) -> int | None:
        """The supervisor's pid when it is alive."""
        return _pidfile_alive(self.layout.pidfile(self.name))

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        if self.running():
            return
        spec = read_json(self.spec_file)
        if not spec:
            raise CommandError(f"service {self.name} is not installed")
        pidfile = self.layout.pidfile(self.name)
        pidfile.unlink(missing_ok=True)
        log = self.layout.log_file(self.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k in _INHERITED_ENV} | spec["env"]
        argv = [
            self.python, str(Path(__file__).resolve()), "supervise",
            "--pidfile", str(pidfile), "--log", str(log), "--name", self.name,
            "--", *spec["command"],
        ]  # fmt: skip
        with open(log, "ab") as out:
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.05)
        raise CommandError(f"service {self.name} did not start; see {log}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout: float = 60.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pid() is None:
                return
            time.sleep(0.05)
        logger.warning("service %s did not stop in %.0fs; killing it", self.name, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.layout.pidfile(self.name).unlink(missing_ok=True)

    def remove(self) -> None:
        self.stop()
        self.spec_file.unlink(missing_ok=True)
        self.layout.pidfile(self.name).unlink(missing_ok=True)


def make_service(
    name: str,
    layout: Layout,
    *,
    use_systemd: bool,
    run: CommandRunner = run_command,
    description: str = "",
    after: Sequence[str] = (),
) -> Service:
    """A systemd unit where systemd runs, a supervised process otherwise."""
    if use_systemd:
        return SystemdService(name, layout, run, description=description, after=after)
    return SupervisedProcess(name, layout)


def _proc_start(pid: int) -> str | None:
    """Start time of a live (non-zombie) process, to tell it from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _pidfile_alive(pidfile: Path) -> int | None:
    try:
        pid_text, _, start = pidfile.read_text().strip().partition(":")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    current = _proc_start(pid)
    if current is None or (start and current != start):
        return None
    return pid


def supervise(
    command: Sequence[str],
    pidfile: Path,
    *,
    name: str = "service",
    max_backoff: float = 60.0,
    stop_grace: float = 40.0,
) -> int:
    """Run `command` until SIGTERM/SIGINT, restarting it whenever it exits.

    Restarts back off exponentially (1 s doubling to `max_backoff`) and reset once the command
    stayed up for a minute. On SIGTERM the child gets SIGTERM and `stop_grace` seconds, then
    SIGKILL. The pidfile holds `pid:start-time` of this process and is removed on the way out.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    write_private_file(pidfile, f"{os.getpid()}:{_proc_start(os.getpid()) or ''}\n", mode=0o644)
    backoff = 1.0
    try:
        while not stopping:
            started = time.monotonic()
            _say(f"supervisor: starting {name}: {shlex.join(command)}")
            child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL)
            while child.poll() is None:
                try:
                    child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
            code = child.returncode
            if stopping:
                break
            backoff = 1.0 if time.monotonic() - started > 60 else min(max_backoff, backoff * 2)
            _say(f"supervisor: {name} exited with {code}; restarting in {backoff:.0f}s")
            deadline = time.monotonic() + backoff
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        if child is not None and child.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=stop_grace)
            if child.poll() is None:
                child.kill()
                child.wait()
        with contextlib.suppress(OSError):
            if pidfile.read_text().startswith(f"{os.getpid()}:"):
                pidfile.unlink()
        _say(f"supervisor: {name} stopped")
    return 0


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ images
@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """What the runner image is built from; a different `key()` means a rebuild is due.

    The runner application's version is not part of the key: a newer runner is baked in by the
    scheduled rebuild or the `build-image` action, not by every hook that notices it.
    """

    base_image: str
    image: str
    dockerhub_mirror: str | None
    lxd: bool
    docker: bool

    def key(self) -> str:
        """A digest of the inputs and of the build script and image templates shipped."""
        digest = hashlib.sha256()
        digest.update(json.dumps(dataclasses.asdict(self), sort_keys=True).encode())
        for path in _image_sources():
            digest.update(str(path.name).encode())
            with contextlib.suppress(OSError):
                digest.update(path.read_bytes())
        return digest.hexdigest()[:16]


def _image_sources() -> list[Path]:
    from github_runner_manager import image

    script = image.default_script_path()
    templates = image.default_image_templates_dir()
    files = [script]
    if templates.is_dir():
        files += sorted(p for p in templates.rglob("*") if p.is_file())
    return files


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """An image build's outcome, as the `build-image` action reports it."""

    image: str
    seconds: float
    cached: bool


def build_image(
    inputs: ImageInputs,
    runner_tarball: Path,
    runner_sha256: str,
    runner_version: str,
    state_dir: Path,
    run: CommandRunner = run_command,
    on_line: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Build the runner image; import it into Docker too when that backend is used.

    Raises:
        ImageBuildError: the build failed (the previous image stays in place).
        CommandError: the Docker import failed.
    """
    from github_runner_manager import image

    options = image.ImageBuildOptions(
        runner_sha256=runner_sha256,
        runner_tarball=runner_tarball,
        runner_version=runner_version,
        base=inputs.base_image,
        alias_prefix=IMAGE_ALIAS_PREFIX,
        cache_dir=state_dir / "image-cache",
        output_dir=state_dir / "images",
        dockerhub_mirror=inputs.dockerhub_mirror,
        lxd=inputs.lxd,
        vm=False,
    )
    result = image.build_runner_image(options, on_line=on_line)
    if inputs.docker and result.rootfs is not None:
        run(["docker", "import", str(result.rootfs), f"{inputs.image}:latest"], timeout=900)
    return BuiltImage(
        image=result.alias or inputs.image, seconds=result.seconds, cached=result.cached
    )


def remove_images(image_name: str, state_dir: Path, run: CommandRunner = run_command) -> None:
    """Remove the runner image from LXD and Docker (where they exist) and the build outputs."""
    if shutil.which("lxc"):
        listed = run(["lxc", "image", "list", image_name, "--format", "json"], check=False)
        try:
            images = json.loads(listed.stdout or "[]")
        except ValueError:
            images = []
        for entry in images:
            aliases = [a.get("name", "") for a in entry.get("aliases") or []]
            if any(alias == image_name or alias.startswith(f"{image_name}-") for alias in aliases):
                run(["lxc", "image", "delete", entry["fingerprint"]], check=False)
    if shutil.which("docker"):
        run(["docker", "image", "rm", "--force", f"{image_name}:latest"], check=False)
    for directory in (state_dir / "images", state_dir / "image-cache"):
        shutil.rmtree(directory, ignore_errors=True)


def image_build_command(python: str, config_file: Path, state_file: Path) -> list[str]:
    """What the rebuild cron entry runs: this script's `build-image`.

    The image inputs (base image, Docker Hub mirror, backends) are read from the charm's state
    file, mode 0600: the mirror URL may carry credentials, which must not be in a command line.
    """
    return [
        python, str(Path(__file__).resolve()), "build-image",
        "--config", str(config_file), "--state-file", str(state_file),
    ]  # fmt: skip


def _build_image_main(args: argparse.Namespace) -> int:
    from github_runner_manager.config import load_config
    from github_runner_manager.github import GitHubClient
    from github_runner_manager.runner_binary import RunnerBinaryCache

    saved = read_json(args.state_file).get("image_inputs")
    if not isinstance(saved, dict):
        print("no image inputs recorded: no backend uses the charm's image", file=sys.stderr)
        return 1
    inputs = ImageInputs(**saved)
    cfg = load_config(args.config)
    token = cfg.github.resolve_token().get_secret_value()
    github = GitHubClient(cfg.github.url, token, timeout=cfg.github.timeout)
    try:
        cache = RunnerBinaryCache(cfg.state_dir / "runner-binary", github, cfg.github.paths[0])
        binary = cache.update() if cache.check() else cache.current()
        assert binary is not None
    finally:
        github.close()
    built = build_image(inputs, binary.path, binary.sha256, binary.version, cfg.state_dir)
    state = read_json(args.state_file)  # again: a hook may have written it meanwhile
    state["image"] = {"key": inputs.key(), "name": built.image, "built_at": time.time()}
    write_private_file(args.state_file, json.dumps(state, indent=1, sort_keys=True) + "\n")
    print(f"image {built.image} built in {built.seconds:.0f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`supervise` and `build-image`; see the module docstring."""
    parser = argparse.ArgumentParser(prog="charm_service.py")
    sub = parser.add_subparsers(dest="command", required=True)
    sup = sub.add_parser("supervise", help="run a command, restarting it when it exits")
    sup.add_argument("--pidfile", type=Path, required=True)
    sup.add_argument("--log", type=Path)
    sup.add_argument("--name", default="service")
    sup.add_argument("argv", nargs=argparse.REMAINDER)
    build = sub.add_parser("build-image", help="rebuild the runner image (the cron entry)")
    build.add_argument("--config", type=Path, required=True)
    build.add_argument("--state-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "supervise":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("supervise needs a command after --")
        return supervise(command, args.pidfile, name=args.name)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _build_image_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
