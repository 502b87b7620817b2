"""Building the runner image (``scripts/build-runner-image.sh``) and scheduling its periodic rebuild.

The shell script does the building (mmdebstrap, the runner app, LXD import, VM image); this module runs
it with list arguments and a timeout, streams its progress into the log one line per step, and turns
its last ``RESULT {json}`` line into an :class:`ImageBuildResult`. A failed build raises
:class:`ImageBuildError` naming the step and the exit code's meaning; the script guarantees that the
image alias then still points at the previous image.

The rebuild schedule is a cron file rendered from ``templates/cron-image-build.j2``. Its minute and hour
offset are derived from a hash of the host name, so a fleet of managers does not rebuild (and hammer
the mirror) at the same moment, while one host always gets the same schedule: re-scheduling with the
same inputs leaves the file untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from croniter import croniter

from github_runner_manager import templates

logger = logging.getLogger(__name__)

#: Where the cron entry goes by default.
CRON_PATH = Path("/etc/cron.d/github-runner-image")
#: Where the cron job's output goes by default.
CRON_LOG = Path("/var/log/github-runner-image/cron.log")
CRON_TEMPLATE = "cron-image-build.j2"
SCRIPT_NAME = "build-runner-image.sh"
#: Seconds a timed-out build gets to clean up after SIGTERM before SIGKILL.
TERM_GRACE = 15.0

#: The script's exit codes (see its --help) and what they mean to an operator.
EXIT_CODES: dict[int, str] = {
    1: "bad arguments",
    2: "not running as root",
    3: "a host tool is missing or LXD is not running (run scripts/start-lxd.sh)",
    4: "the base distribution or its mirror is not usable",
    5: "the runner tarball is missing, could not be downloaded, or failed its sha256 check",
    6: "mmdebstrap failed",
    7: "customising or packing the root filesystem failed",
    8: "the VM image failed its checks",
    9: "the LXD import or alias update failed",
    10: "another build holds the cache lock",
    70: "failure injected on purpose (--fail-after)",
}

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parent.parent


class ImageBuildError(Exception):
    """The image build failed; the previous image alias is still in place.

    Attributes:
        exit_code: the script's exit code (negative: killed by that signal; None: timed out).
        step: the last step the script started.
        output: the last lines of its output (never contains a secret: the script gets none).
    """

    def __init__(
        self, message: str, *, exit_code: int | None, step: str | None, output: str
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.step = step
        self.output = output


@dataclass(frozen=True)
class ImageBuildOptions:
    """Inputs of one image build; each maps onto one option of the script.

    Exactly one of ``runner_tarball`` and ``runner_url`` is needed, with ``runner_sha256`` (the script
    verifies it). ``None`` leaves the script's default (e.g. ``cache_dir`` → /var/cache/github-runner-image).
    """

    runner_sha256: str
    runner_tarball: Path | None = None
    runner_url: str | None = None
    runner_version: str | None = None
    base: str = "debian:bookworm"
    alias_prefix: str = "github-runner"
    cache_dir: Path | None = None
    output_dir: Path | None = None
    log_file: Path | None = None
    mirror: str | None = None
    dockerhub_mirror: str | None = None
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    extra_packages: tuple[str, ...] = ()
    vm: bool = True
    import_vm: bool = False
    lxd: bool = True
    use_cache: bool = True
    fail_after: str | None = None
    timeout: float = 3600.0
    script: Path | None = None
    #: the files baked into the image (start script, units); default: the shipped templates/image
    templates_dir: Path | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ImageBuildResult:
    """What a successful build produced."""

    alias: str | None
    timestamped_alias: str | None
    seconds: float
    cached: bool
    vm_image: Path | None
    vm_metadata: Path | None = None
    fingerprint: str | None = None
    previous_fingerprint: str | None = None
    rootfs: Path | None = None
    cache_key: str | None = None
    runner_version: str | None = None
    log: Path | None = None
    base_cached: bool = False


def default_script_path() -> Path:
    """The build script: $GHRM_BUILD_IMAGE_SCRIPT, the installed copy, or the checkout's scripts/."""
    override = os.environ.get("GHRM_BUILD_IMAGE_SCRIPT")
    if override:
        return Path(override)
    for candidate in (_PACKAGE_DIR / "scripts" / SCRIPT_NAME, _REPO_DIR / "scripts" / SCRIPT_NAME):
        if candidate.is_file():
            return candidate
    return _REPO_DIR / "scripts" / SCRIPT_NAME


def default_image_templates_dir() -> Path:
    """The files the image build puts into the image: the installed copy, else the checkout's."""
    for candidate in (_PACKAGE_DIR / "_templates" / "image", _REPO_DIR / "templates" / "image"):
        if (candidate / "github-runner-start.sh").is_file():
            return candidate
    return _REPO_DIR / "templates" / "image"


def build_command(options: ImageBuildOptions) -> list[str]:
    """The script's argument list for these options (no shell involved)."""
    script = options.script or default_script_path()
    if (options.runner_tarball is None) == (options.runner_url is None):
        raise ValueError("give exactly one of runner_tarball and runner_url")
    args = [str(script), "--base", options.base, "--alias-prefix", options.alias_prefix]
    args += ["--runner-sha256", options.runner_sha256]
    if options.runner_tarball is not None:
        args += ["--runner-tarball", str(options.runner_tarball)]
    if options.runner_url is not None:
        args += ["--runner-url", options.runner_url]
    optional: list[tuple[str, object | None]] = [
        ("--runner-version", options.runner_version),
        ("--cache-dir", options.cache_dir),
        ("--output-dir", options.output_dir),
        ("--log", options.log_file),
        ("--mirror", options.mirror),
        ("--dockerhub-mirror", options.dockerhub_mirror),
        ("--templates-dir", options.templates_dir or default_image_templates_dir()),
        ("--fail-after", options.fail_after),
    ]
    for flag, value in optional:
        if value is not None:
            args += [flag, str(value)]
    if options.extra_packages:
        args += ["--extra-packages", ",".join(options.extra_packages)]
    if not options.vm:
        args.append("--no-vm")
    if options.import_vm:
        args.append("--import-vm")
    if not options.lxd:
        args.append("--no-lxd")
    if not options.use_cache:
        args.append("--no-cache")
    args += list(options.extra_args)
    return args


def _environment(options: ImageBuildOptions) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BUILD_RUNNER_IMAGE_FAIL_AT", None)  # only options.fail_after injects failures
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = getattr(options, name)
        if value is not None:
            env[name] = value
            env[name.upper()] = value
    return env


def image_cache_key(options: ImageBuildOptions) -> str:
    """The script's cache key for these inputs (``--print-cache-key``; builds nothing)."""
    completed = subprocess.run(
        [*build_command(options), "--print-cache-key"],
        env=_environment(options),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        raise ImageBuildError(
            f"build-runner-image.sh --print-cache-key failed: {completed.stderr.strip()}",
            exit_code=completed.returncode,
            step=None,
            output=completed.stderr,
        )
    return completed.stdout.strip()


def build_runner_image(
    options: ImageBuildOptions, *, on_line: Callable[[str], None] | None = None
) -> ImageBuildResult:
    """Run the image build to completion and return what it produced.

    Progress: every ``STEP`` line of the script is logged at INFO, the rest at DEBUG; ``on_line`` (if
    given) sees every line as it arrives. The whole process group is killed after ``options.timeout``.

    Raises:
        ImageBuildError: the script failed or timed out (the previous alias is still in place).
        ValueError: the options are inconsistent.
    """
    args = build_command(options)
    logger.info("image build start: %s", shlex.join(args))
    started = time.monotonic()
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_environment(options),
        text=True,
        bufsize=1,
        start_new_session=True,  # so a timeout kills mmdebstrap and its children too
    )
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        logger.error("image build timed out after %.0fs; stopping it", options.timeout)
        # TERM first so the script removes a half-imported image and its mounts; KILL if it lingers.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=TERM_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(options.timeout, kill_on_timeout)
    timer.daemon = True
    timer.start()
    tail: deque[str] = deque(maxlen=60)
    result_line: str | None = None
    step: str | None = None
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if on_line is not None:
                on_line(line)
            if line.startswith("RESULT "):
                result_line = line[len("RESULT ") :]
            elif line.startswith("STEP "):
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "begin":
                    step = parts[1]
                logger.info("image build: %s", line)
            else:
                logger.debug("image build: %s", line)
        returncode = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    elapsed = time.monotonic() - started
    output = "\n".join(tail)
    if timed_out.is_set():
        raise ImageBuildError(
            f"image build timed out after {options.timeout:.0f}s in step {step}",
            exit_code=None,
            step=step,
            output=output,
        )
    if returncode != 0 or result_line is None:
        meaning = EXIT_CODES.get(returncode, "unexpected failure")
        errors = [line for line in tail if "ERROR" in line or "INJECTED" in line]
        detail = f": {errors[-1]}" if errors else ""
        raise ImageBuildError(
            f"image build failed in step {step} with exit code {returncode} ({meaning}){detail}",
            exit_code=returncode,
            step=step,
            output=output,
        )
    data = json.loads(result_line)
    result = ImageBuildResult(
        alias=data.get("alias"),
        timestamped_alias=data.get("timestamped_alias"),
        seconds=float(data.get("seconds", elapsed)),
        cached=bool(data.get("cached")),
        vm_image=Path(data["vm_image"]) if data.get("vm_image") else None,
        vm_metadata=Path(data["vm_metadata"]) if data.get("vm_metadata") else None,
        fingerprint=data.get("fingerprint"),
        previous_fingerprint=data.get("previous_fingerprint"),
        rootfs=Path(data["rootfs"]) if data.get("rootfs") else None,
        cache_key=data.get("cache_key"),
        runner_version=data.get("runner_version"),
        log=Path(data["log"]) if data.get("log") else None,
        base_cached=bool(data.get("base_cached")),
    )
    logger.info(
        "image build done: alias=%s image=%s cached=%s seconds=%.1f",
        result.alias,
        result.timestamped_alias,
        result.cached,
        result.seconds,
    )
    return result


# --------------------------------------------------------------------------- schedule


def _host_hash(hostname: str) -> int:
    return int.from_bytes(hashlib.sha256(hostname.encode()).digest()[:8], "big")


def cron_schedule(interval_hours: int, hostname: str) -> str:
    """The five cron fields for a rebuild every ``interval_hours``, jittered by the host name.

    * below 24 h: minute M, hours ``O-23/N`` (O = offset below N); when N does not divide 24 the last
      gap of a day is shorter, never longer;
    * 24 h: once a day at a host-specific hour;
    * above 24 h: every ``round(N / 24)`` days (day-of-month step, restarting each month).

    Raises:
        ValueError: interval below one hour or above 31 days.
    """
    if isinstance(interval_hours, bool) or not isinstance(interval_hours, int):
        raise ValueError(f"interval_hours must be a whole number of hours, not {interval_hours!r}")
    if interval_hours < 1 or interval_hours > 31 * 24:
        raise ValueError(f"interval_hours must be between 1 and {31 * 24}, not {interval_hours}")
    digest = _host_hash(hostname)
    minute = digest % 60
    if interval_hours < 24:
        offset = (digest // 60) % interval_hours
        hours = "*" if interval_hours == 1 else f"{offset}-23/{interval_hours}"
        expression = f"{minute} {hours} * * *"
    else:
        hour = (digest // 60) % 24
        days = max(1, round(interval_hours / 24))
        day_field = "*" if days == 1 else f"*/{days}"
        expression = f"{minute} {hour} {day_field} * *"
    if not croniter.is_valid(expression):
        raise ValueError(f"computed an invalid cron schedule {expression!r}")
    return expression


def _cron_escape(text: str) -> str:
    # In a crontab command an unescaped % ends the command and starts stdin.
    return text.replace("%", r"\%")


def render_schedule(
    interval_hours: int,
    command: Sequence[str],
    *,
    log: Path = CRON_LOG,
    hostname: str | None = None,
    env: Mapping[str, str] | None = None,
    user: str = "root",
    templates_dir: Path | None = None,
) -> str:
    """The cron file's text (see :func:`schedule_build_runner_image`).

    ``templates_dir`` is the operator's override directory (a ``cron-image-build.j2`` there wins).
    """
    if not command:
        raise ValueError("command must not be empty")
    host = hostname if hostname is not None else socket.gethostname()
    schedule = cron_schedule(interval_hours, host)
    for key, value in (env or {}).items():
        if not key.replace("_", "").isalnum() or "\n" in value or "\n" in key:
            raise ValueError(f"cron environment entry {key!r} is not a NAME=value line")
    context = {
        "schedule": schedule,
        "interval_hours": interval_hours,
        "user": user,
        "command": _cron_escape(shlex.join(command)),
        "log": _cron_escape(shlex.quote(str(log))),
        "log_dir": _cron_escape(shlex.quote(str(log.parent))),
        "env": dict(env or {}),
    }
    # The operator's templates_dir overrides the shipped template, as for every other template.
    text = templates.render(CRON_TEMPLATE, context, templates_dir=templates_dir)
    line = next(
        (
            candidate
            for candidate in text.splitlines()
            if candidate.strip()
            and not candidate.startswith("#")
            and "=" not in candidate.split()[0]
        ),
        None,
    )
    if line is None or not croniter.is_valid(" ".join(line.split()[:5])):
        raise ValueError(f"the rendered cron file has no valid schedule line: {line!r}")
    return text if text.endswith("\n") else text + "\n"


def schedule_build_runner_image(
    interval_hours: int,
    command: Sequence[str],
    path: Path = CRON_PATH,
    log: Path = CRON_LOG,
    *,
    hostname: str | None = None,
    env: Mapping[str, str] | None = None,
    user: str = "root",
    templates_dir: Path | None = None,
) -> Path:
    """Install (or update) the cron entry that rebuilds the image every ``interval_hours``.

    Idempotent: when the file already has the rendered content it is not rewritten. The write is
    atomic (temporary file + rename), mode 0644, as cron requires for /etc/cron.d. ``env`` lines
    (e.g. proxies) are set for the job; never put a secret there.

    Returns:
        The cron file's path.
    """
    text = render_schedule(
        interval_hours,
        command,
        log=log,
        hostname=hostname,
        env=env,
        user=user,
        templates_dir=templates_dir,
    )
    try:
        if path.read_text() == text:
            logger.debug("image build schedule unchanged: %s", path)
            return path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".ghrm-cron-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.info("image build scheduled every %dh: %s", interval_hours, path)
    return path


def remove_schedule(path: Path = CRON_PATH) -> bool:
    """Remove the cron entry; returns whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    logger.info("image build schedule removed: %s", path)
    return True
