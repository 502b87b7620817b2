"""A backend without machines: instances in memory, or as local processes running the runner app.

``mode: memory`` keeps instances as records only; they are RUNNING from the moment ``create`` returns
until deleted (or :meth:`FakeBackend.stop_instance` says the "machine" powered off). It is what the
planner benchmarks and the charm tests use.

``mode: local`` makes each instance a real local process: the runner application (the tarball the
manager's runner-binary cache downloaded, or an extracted directory given as ``runner_dir``) is
extracted once, mirrored per instance (its own directory, files symlinked, so each runner has its own
work folder) and started as ``sh run.sh`` in its own session with ``RUNNER_NAME`` and the JIT config
in ``ACTIONS_RUNNER_INPUT_JITCONFIG`` (the runner's equivalent of ``--jitconfig``, kept out of the
process arguments), so a job really runs end to end without containers. The process *is* the instance: RUNNING while it is alive, STOPPED once it
exited (an ephemeral runner exits after its one job). ``delete`` kills the whole process group.

With ``state_file`` set, every instance is written to a JSON file (atomically, under a file lock) so a
restarted manager -- or another process sharing the file -- lists the same instances, as a real cloud
would; local-mode processes outlive a SIGKILLed manager and are found (and reaped) by its successor.

Failure injection: ``create_latency``/``delete_latency`` (durations), ``fail_rate`` (probability that a
create raises :class:`BackendError`), ``capacity`` (more live instances raise :class:`CapacityError`),
``seed`` for reproducible failures.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from github_runner_manager.backends.base import (
    Backend,
    BackendConfigError,
    BackendError,
    BackendSettings,
    CapacityError,
    Instance,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
)
from github_runner_manager.units import parse_duration

logger = logging.getLogger(__name__)

#: The runner reads its JIT config from this variable when ``--jitconfig`` is not given.
JIT_ENV = "ACTIONS_RUNNER_INPUT_JITCONFIG"
#: Seconds a killed process group gets between SIGTERM and SIGKILL.
_KILL_GRACE = 2.0


class FakeSettings(BackendSettings):
    """Settings of the fake backend (``backends: {fake: {...}}``)."""

    mode: Literal["memory", "local"] = "memory"
    create_latency: float = 0.0
    delete_latency: float = 0.0
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    capacity: int | None = Field(default=None, ge=0)
    seed: int | None = None
    state_file: Path | None = None
    #: local mode: an extracted runner app (a directory holding run.sh); else the manager's cached tarball.
    runner_dir: Path | None = None
    #: local mode: a runner tarball to extract (used when runner_dir is not set).
    runner_tarball: Path | None = None
    #: local mode: where the app is extracted and each instance's work dir and log live.
    work_dir: Path | None = None
    #: local mode: keep each instance's work dir and log after delete (debugging).
    keep_logs: bool = False

    @field_validator("create_latency", "delete_latency", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


@dataclass
class _Record:
    """One instance as stored (in memory and in the state file)."""

    name: str
    state: str
    tags: dict[str, str]
    created_at: float
    group: str = ""
    image: str = ""
    cpu: int = 0
    memory: int = 0
    disk: int = 0
    pid: int | None = None
    pid_start: str | None = None
    creator_pid: int | None = None
    creator_start: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Record:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _proc_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat), to tell a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; it is in parentheses
    rest = stat[stat.rfind(")") + 2 :].split()
    if not rest or rest[0] in {"Z", "X"}:
        return None  # zombie or dead: the process has exited
    return rest[19] if len(rest) > 19 else None


def _alive(pid: int | None, start: str | None) -> bool:
    """True when ``pid`` runs and is the same process that was recorded (not a reused pid)."""
    if not pid:
        return False
    current = _proc_start(pid)
    return current is not None and (start is None or current == start)


class FakeBackend(Backend):
    """In-memory or local-process backend honouring the backend contract; thread-safe."""

    name: ClassVar[str] = "fake"
    settings_model: ClassVar[type[BackendSettings]] = FakeSettings

    def __init__(self, settings: Mapping[str, Any] | None = None, *, prefix: str = "ghr") -> None:
        super().__init__(settings, prefix=prefix)
        self.cfg: FakeSettings = self.settings  # type: ignore[assignment]
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._rng = random.Random(self.cfg.seed)
        self._tarball_provider: Callable[[], Path | None] | None = None
        self._app_dir: Path | None = None
        self._my_start = _proc_start(os.getpid())
        self.created = 0
        self.deleted = 0
        if self.cfg.mode == "local":
            self._work_dir = (
                self.cfg.work_dir or Path(tempfile.gettempdir()) / f"ghrm-fake-{prefix}"
            )
        else:
            self._work_dir = self.cfg.work_dir or Path(tempfile.gettempdir())
        if self.cfg.state_file is not None:
            self.cfg.state_file.parent.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ hooks used by the manager
    def use_runner_binary(self, provider: Callable[[], Path | None]) -> None:
        """Let local mode extract the runner app from the manager's cached tarball (resolved lazily)."""
        self._tarball_provider = provider

    # ------------------------------------------------------------------ persistence
    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, _Record]]:
        """The instance table, reloaded from and written back to the state file when one is set."""
        with self._lock:
            path = self.cfg.state_file
            if path is None:
                yield self._records
                return
            lock_path = path.with_name(path.name + ".lock")
            with open(lock_path, "a+") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    self._records = self._load(path)
                    before = json.dumps({k: v.to_json() for k, v in self._records.items()})
                    yield self._records
                    after = json.dumps({k: v.to_json() for k, v in self._records.items()})
                    if after != before:
                        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                        tmp.write_text(after)
                        os.replace(tmp, path)
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    @staticmethod
    def _load(path: Path) -> dict[str, _Record]:
        try:
            raw = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BackendError(f"fake backend state file {path} is unreadable: {exc}") from None
        return {name: _Record.from_json(data) for name, data in raw.items()}

    # ------------------------------------------------------------------ state mapping
    def _observed_state(self, rec: _Record) -> InstanceState:
        state = InstanceState(rec.state)
        if state is InstanceState.PENDING and rec.creator_pid is not None:
            if rec.creator_pid == os.getpid():
                return state
            if not _alive(rec.creator_pid, rec.creator_start):
                return InstanceState.ERROR  # its creator died mid-create: it will never start
        if state is InstanceState.RUNNING and self.cfg.mode == "local":
            child = self._children.get(rec.name)
            if child is not None:
                return InstanceState.RUNNING if child.poll() is None else InstanceState.STOPPED
            return (
                InstanceState.RUNNING if _alive(rec.pid, rec.pid_start) else InstanceState.STOPPED
            )
        return state

    def _to_instance(self, rec: _Record) -> Instance:
        extra = dict(rec.extra)
        if rec.pid is not None:
            extra["pid"] = rec.pid
        return Instance(
            name=rec.name,
            state=self._observed_state(rec),
            tags=dict(rec.tags),
            created_at=rec.created_at,
            address="127.0.0.1" if self.cfg.mode == "local" else None,
            backend=self.name,
            extra=extra,
        )

    # ------------------------------------------------------------------ contract
    def create(self, spec: InstanceSpec) -> Instance:
        """Create an instance; in local mode start the runner app with the spec's JIT config."""
        with self._state() as records:
            if spec.name in records:
                raise BackendError(f"instance {spec.name} already exists")
            if self.cfg.capacity is not None:
                live = sum(
                    1
                    for r in records.values()
                    if self._observed_state(r) not in {InstanceState.DELETING}
                )
                if live >= self.cfg.capacity:
                    raise CapacityError(
                        f"fake backend is full ({live}/{self.cfg.capacity} instances)"
                    )
            if self.cfg.fail_rate and self._rng.random() < self.cfg.fail_rate:
                raise BackendError(f"injected create failure for {spec.name}")
            records[spec.name] = _Record(
                name=spec.name,
                state=InstanceState.PENDING.value,
                tags=dict(spec.tags),
                created_at=time.time(),
                group=spec.group,
                image=spec.image,
                cpu=spec.cpu,
                memory=spec.memory,
                disk=spec.disk,
                creator_pid=os.getpid(),
                creator_start=self._my_start,
            )
        if self.cfg.create_latency:
            time.sleep(self.cfg.create_latency)
        pid: int | None = None
        pid_start: str | None = None
        if self.cfg.mode == "local":
            try:
                pid, pid_start = self._start_process(spec)
            except Exception:
                with self._state() as records:
                    records.pop(spec.name, None)
                raise
        with self._state() as records:
            rec = records.get(spec.name)
            if rec is None:  # deleted while it was being created
                if pid is not None:
                    self._kill(spec.name, pid, pid_start)
                raise BackendError(f"instance {spec.name} was deleted while being created")
            rec.state = InstanceState.RUNNING.value
            rec.pid, rec.pid_start = pid, pid_start
            self.created += 1
            logger.info(
                "fake instance created name=%s mode=%s pid=%s", spec.name, self.cfg.mode, pid
            )
            return self._to_instance(rec)

    def get(self, name: str) -> Instance:
        """Return one instance or raise InstanceNotFound."""
        with self._state() as records:
            rec = records.get(name)
            if rec is None:
                raise InstanceNotFound(f"instance {name} does not exist")
            return self._to_instance(rec)

    def list(
        self, prefix: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[Instance]:
        """Instances whose name starts with ``prefix`` and that carry every tag in ``tags``."""
        with self._state() as records:
            return [
                self._to_instance(rec)
                for rec in records.values()
                if self._matches(rec.name, rec.tags, prefix, tags)
            ]

    def delete(self, name: str) -> None:
        """Delete an instance (kill its process group in local mode); a missing one is fine."""
        with self._state() as records:
            rec = records.get(name)
            if rec is None:
                return
            rec.state = InstanceState.DELETING.value
            pid, pid_start = rec.pid, rec.pid_start
        if self.cfg.delete_latency:
            time.sleep(self.cfg.delete_latency)
        if pid is not None:
            self._kill(name, pid, pid_start)
        with self._state() as records:
            if records.pop(name, None) is not None:
                self.deleted += 1
        self._cleanup_workdir(name)
        logger.info("fake instance deleted name=%s", name)

    def close(self) -> None:
        """Reap finished children; running instances are left running (they belong to the backend)."""
        with self._lock:
            for name, child in list(self._children.items()):
                if child.poll() is not None:
                    self._children.pop(name, None)

    # ------------------------------------------------------------------ test helpers
    def stop_instance(self, name: str) -> None:
        """Simulate the machine powering off (memory mode) or kill the runner process (local mode)."""
        with self._state() as records:
            rec = records.get(name)
            if rec is None:
                raise InstanceNotFound(f"instance {name} does not exist")
            pid, pid_start = rec.pid, rec.pid_start
            if pid is None:
                rec.state = InstanceState.STOPPED.value
        if pid is not None:
            self._kill(name, pid, pid_start)

    def log_path(self, name: str) -> Path:
        """Where a local-mode instance's output goes."""
        return self._work_dir / "instances" / name / "runner.log"

    # ------------------------------------------------------------------ local mode
    def _runner_app(self) -> Path:
        """The extracted runner app directory, extracting the tarball once."""
        with self._lock:
            if self.cfg.runner_dir is not None:
                if not (self.cfg.runner_dir / "run.sh").exists():
                    raise BackendConfigError(
                        f"backends.fake.runner_dir: {self.cfg.runner_dir} has no run.sh"
                    )
                return self.cfg.runner_dir
            if self._app_dir is not None:
                return self._app_dir
            tarball = self.cfg.runner_tarball
            if tarball is None and self._tarball_provider is not None:
                tarball = self._tarball_provider()
            if tarball is None or not Path(tarball).exists():
                raise BackendConfigError(
                    "backends.fake: local mode needs runner_dir, runner_tarball or a downloaded "
                    "runner binary (run `github-runner-manager update-runner-bin`)"
                )
            tarball = Path(tarball)
            target = (
                self._work_dir / "apps" / tarball.name.replace(".tar.gz", "").replace(".tgz", "")
            )
            if not (target / "run.sh").exists():
                tmp = Path(
                    tempfile.mkdtemp(prefix=".extract-", dir=self._ensure(self._work_dir / "apps"))
                )
                try:
                    with tarfile.open(tarball) as archive:
                        archive.extractall(tmp, filter="data")
                    root = tmp
                    if not (root / "run.sh").exists():
                        found = next(iter(sorted(tmp.rglob("run.sh"))), None)
                        if found is None:
                            raise BackendError(f"runner tarball {tarball.name} holds no run.sh")
                        root = found.parent
                    try:
                        os.replace(root, target)
                    except OSError:
                        if not (
                            target / "run.sh"
                        ).exists():  # another process won the race otherwise
                            raise
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            self._app_dir = target
            return target

    @staticmethod
    def _ensure(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _mirror(app: Path, target: Path) -> None:
        """Give an instance its own view of the app: real directories, files symlinked.

        The runner resolves its root from its own path, so each instance gets its own ``_work``
        and state files (as on separate machines) while the app is extracted only once.
        """
        for root, _dirs, files in os.walk(app):
            rel = Path(root).relative_to(app)
            (target / rel).mkdir(parents=True, exist_ok=True)
            for name in files:
                link = target / rel / name
                if not link.exists():
                    link.symlink_to(Path(root) / name)

    def _start_process(self, spec: InstanceSpec) -> tuple[int, str | None]:
        app = self._runner_app()
        workdir = self._ensure(self._work_dir / "instances" / spec.name)
        self._mirror(app, workdir)
        env = {
            k: v for k, v in os.environ.items() if k not in {"GITHUB_TOKEN"} and "SECRET" not in k
        }
        env["RUNNER_NAME"] = spec.name
        env["RUNNER_WORKDIR"] = str(workdir)
        # the runner's documented input variable, equivalent to `run.sh --jitconfig X` but keeping
        # the secret out of the process arguments (`ps` shows those to every user)
        env[JIT_ENV] = spec.jit_config
        sh = shutil.which("sh") or "/bin/sh"
        with open(workdir / "runner.log", "ab") as log:
            child = subprocess.Popen(
                [sh, str(workdir / "run.sh")],
                cwd=str(workdir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self._children[spec.name] = child
        return child.pid, _proc_start(child.pid)

    def _kill(self, name: str, pid: int, pid_start: str | None) -> None:
        """SIGTERM the instance's process group, SIGKILL what is left; reap it if it is our child."""
        child = self._children.pop(name, None)
        if child is None and not _alive(pid, pid_start):
            return  # gone already, or the pid now belongs to someone else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + _KILL_GRACE
        while time.monotonic() < deadline:
            if (child.poll() is not None) if child is not None else not _alive(pid, pid_start):
                break
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # whatever of the group is still there
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=_KILL_GRACE)

    def _cleanup_workdir(self, name: str) -> None:
        if self.cfg.mode == "local" and not self.cfg.keep_logs:
            shutil.rmtree(self._work_dir / "instances" / name, ignore_errors=True)
