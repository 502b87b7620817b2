# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""The narrow interface the charm drives the runner manager through, the real one, and a fake.

The charm holds a `ManagerInterface` and nothing else of the workload:

* `RealManager` writes the manager's config file (mode 0600; secrets come only from Juju secrets
  through `CharmState`), installs what the unit needs, keeps `github-runner-manager run` alive as a
  supervised service (reconciling happens there, on `reconcile-interval`, not in hooks) and calls
  the `github_runner_manager` library for the actions;
* `FakeManager` is a working manager of imaginary machines for the charm's Scenario tests: it keeps
  real counts, follows the same decisions (`plan_change`) and records what it did.

Errors: `ManagerError` (the action fails with its message; the status shows it while it lasts) and
its child `ManagerBlockedError` (the operator must act: token or credentials rejected, image
missing, a configuration the manager refuses), whose message starts with what to fix.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import yaml

import charm_service
from charm_service import IMAGE_BACKENDS, CommandError, CommandRunner, ImageInputs, Layout
from charm_state import CharmState

if TYPE_CHECKING:
    from github_runner_manager.config import ManagerConfig
    from github_runner_manager.manager import RunnerManager

logger = logging.getLogger(__name__)

RunnerStatus = Literal["idle", "busy", "offline", "unknown"]
CHECK_RUNNERS_KEYS = ("online", "busy", "offline", "unknown", "runners")
UPDATE_RUNNER_BIN_KEYS = ("version", "url", "sha256", "updated")
BUILD_IMAGE_KEYS = ("image", "seconds")
#: Where the manager serves its Prometheus metrics (loopback: the COS agent runs on the unit).
METRICS_PORT = 9464
#: Where the manager listens for GitHub webhooks when `webhook-secret` is set.
WEBHOOK_PORT = 8080
#: Seconds between two checks of the token and the backends while nothing changed.
HEALTH_INTERVAL = 900.0

#: Called with one line saying what a long step is doing (the charm shows it as maintenance).
Progress = Callable[[str], None]


class ManagerError(Exception):
    """The manager could not do what was asked; the message tells the operator what to do."""


class ManagerBlockedError(ManagerError):
    """Only the operator can fix this; the message starts with what to change."""


class TokenRejectedError(ManagerBlockedError):
    """GitHub rejected the token (401, or a 403 that is not a rate limit)."""


class BackendRejectedError(ManagerBlockedError):
    """The backend rejected its credentials."""


class ImageMissingError(ManagerBlockedError):
    """The runner image does not exist and could not be built."""


def token_rejected_message(detail: str) -> str:
    """The blocked message for a token GitHub rejects (`detail` never holds the token)."""
    return (
        f"token: GitHub rejected the token ({detail}); put a valid token in the secret "
        "(`juju update-secret`) or point token at another secret"
    )


def backend_rejected_message(backend: str, detail: str) -> str:
    """The blocked message for backend credentials the backend rejects."""
    return (
        f"backend-config: the {backend} backend rejected the credentials ({detail}); fix the secret"
    )


def image_missing_message(image: str, detail: str) -> str:
    """The blocked message for a runner image that is missing."""
    return f"runner image {image} is missing ({detail}); fix the cause, then run the build-image action"


@runtime_checkable
class ManagerInterface(Protocol):
    """What the charm asks of the runner manager; nothing more.

    Every method either does the work and reports it, or raises `ManagerError` (or
    `ManagerBlockedError`) with a message an operator can act on.
    """

    def apply(self, state: CharmState, progress: Progress | None = None) -> None:
        """Make `state` the manager's configuration: install what is missing, write the config,
        keep the service running (restarted when its config changed). Runners converge over time.

        A change of token, path, labels, groups, backend or Redis first flushes the idle runners
        made under the old configuration, with the old configuration (so with the old token).
        """

    def upgrade(self, state: CharmState | None, progress: Progress | None = None) -> None:
        """After a charm upgrade: flush idle runners, rebuild the image if its inputs changed,
        restart the service. With no valid state, only restart what runs."""

    def remove(self) -> int:
        """The unit goes: flush every runner (busy ones too), remove the service, the image
        rebuild schedule and the images; return how many runners were removed."""

    def reconcile(self) -> int:
        """Converge now; return runners created minus runners removed."""

    def flush(self, flush_busy: bool) -> int:
        """Remove idle (and with `flush_busy`, busy) runners; return how many were removed."""

    def check_runners(self) -> dict[str, Any]:
        """Counts as GitHub sees them: `online`, `busy`, `offline`, `unknown`, and `runners`
        (the runner names, comma-separated)."""

    def update_runner_bin(self) -> dict[str, Any]:
        """Fetch the latest runner application if newer: `version`, `url`, `sha256`, `updated`."""

    def build_image(self) -> dict[str, Any]:
        """Build the runner image now: `image` (its name) and `seconds` (how long it took)."""

    def dump_config(self) -> str:
        """The effective configuration as YAML, every secret redacted."""

    def summary(self) -> str:
        """One line for the unit's status, like "3 runners: 1 idle, 2 busy"."""


# ------------------------------------------------------------------------------ decisions
@dataclasses.dataclass(frozen=True)
class ConfigChange:
    """How a new manager configuration differs from the one in force.

    Attributes:
        first: there was no configuration before.
        changed: the configuration differs (the service must restart to use it).
        reasons: what changed among `path`, `token`, `labels`, `groups`, `backend`, `redis`.
        flush_old: runners made under the old configuration must go (with that configuration)
            before the new one takes over: any of `reasons` is set.
    """

    first: bool
    changed: bool
    reasons: tuple[str, ...] = ()

    @property
    def flush_old(self) -> bool:
        """Idle runners of the old configuration are flushed first."""
        return not self.first and bool(self.reasons)


#: Group keys that only say how many runners to keep (changing them needs no flush).
_COUNT_KEYS = frozenset({"min_idle", "max_runners", "max_lifetime"})


def plan_change(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> ConfigChange:
    """Compare two manager config mappings (pure; both in `to_manager_config` form).

    Only changes to where and as whom runners register (path, token), what they look like
    (labels, groups), where they run (backend and its settings) and where their records are
    (Redis) make the old runners unusable; counts, intervals and caps do not.
    """
    if old is None:
        return ConfigChange(first=True, changed=True)
    if old == new:
        return ConfigChange(first=False, changed=False)
    reasons: list[str] = []
    old_github, new_github = old.get("github", {}), new.get("github", {})
    if old_github.get("paths") != new_github.get("paths") or old_github.get(
        "url"
    ) != new_github.get("url"):
        reasons.append("path")
    if old_github.get("token") != new_github.get("token"):
        reasons.append("token")
    old_groups = {g.get("name"): g for g in old.get("runner_groups", [])}
    new_groups = {g.get("name"): g for g in new.get("runner_groups", [])}
    if any(
        name in new_groups and old_groups[name].get("labels") != new_groups[name].get("labels")
        for name in old_groups
    ):
        reasons.append("labels")

    def shape(group: Mapping[str, Any]) -> dict[str, Any]:
        ignored = _COUNT_KEYS | {"labels", "backend", "backends"}
        return {k: v for k, v in group.items() if k not in ignored}

    if set(old_groups) != set(new_groups) or any(
        shape(old_groups[name]) != shape(new_groups[name]) for name in old_groups
    ):
        reasons.append("groups")
    if old.get("backends") != new.get("backends") or any(
        name in new_groups
        and (
            old_groups[name].get("backend"),
            old_groups[name].get("backends"),
        )
        != (new_groups[name].get("backend"), new_groups[name].get("backends"))
        for name in old_groups
    ):
        reasons.append("backend")
    if old.get("redis") != new.get("redis"):
        reasons.append("redis")
    return ConfigChange(first=False, changed=True, reasons=tuple(reasons))


def needed_packages(state: CharmState) -> set[str]:
    """The Debian/Ubuntu packages this unit needs for `state` (LXD itself aside)."""
    packages: set[str] = set()
    if state.redis_url is None:
        packages.add("redis-server")
    for backend in backends_used(state):
        packages.update(charm_service.BACKEND_PACKAGES.get(backend, ()))
    return packages


def backends_used(state: CharmState) -> list[str]:
    """Every backend a runner group uses, in first-use order."""
    return list(dict.fromkeys(name for group in state.runner_groups for name in group.backends))


def image_inputs(state: CharmState) -> ImageInputs | None:
    """What the runner image is built from, or None when no backend needs the charm's image."""
    used = set(backends_used(state))
    if not used & IMAGE_BACKENDS:
        return None
    return ImageInputs(
        base_image=state.base_image,
        image=state.image,
        dockerhub_mirror=state.dockerhub_mirror,
        lxd="lxd" in used,
        docker="docker" in used,
    )


def token_id(token: str) -> str:
    """A short fingerprint of a token: tells tokens apart without revealing them."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def summary_line(counts: Mapping[str, int]) -> str:
    """Like "3 runners: 1 idle, 2 busy" (other states only when there are some)."""
    total = sum(counts.values())
    parts = [f"{counts.get('idle', 0)} idle", f"{counts.get('busy', 0)} busy"]
    parts += [
        f"{count} {state}"
        for state, count in sorted(counts.items())
        if state not in ("idle", "busy") and count
    ]
    return f"{total} runner{'' if total == 1 else 's'}: {', '.join(parts)}"


# ----------------------------------------------------------------------------------- fake
@dataclasses.dataclass
class FakeRunner:
    """One imaginary runner."""

    name: str
    group: str
    status: RunnerStatus = "idle"
    token: str = ""


@dataclasses.dataclass(frozen=True)
class FakeFlush:
    """One flush the fake did: busy ones too or not, with which token (fingerprint), how many."""

    flush_busy: bool
    token: str
    removed: int


class FakeManager:
    """An in-memory `ManagerInterface`: runners are records in a dict, nothing else exists.

    Reconciling keeps each group's `min_idle` idle runners within `max_runners` and
    `max_total_runners`, never removes a busy runner and removes offline ones. `apply` follows the
    real manager's decisions: packages, image builds, `plan_change` (flush with the old token,
    restart). Tests set the scene through `runners`, `add_runner` and the knobs
    `rejected_tokens`, `backend_rejected` and `image_build_fails`, and read what happened in
    `packages`, `images`, `flushes`, `service_restarts`, `service_running`, `removed`.
    """

    FAKE_RUNNER_VERSION = "0.0.0-fake"

    def __init__(self) -> None:
        self.state: CharmState | None = None
        self.config: dict[str, Any] | None = None
        self.runners: dict[str, FakeRunner] = {}
        self.runner_binary: dict[str, Any] | None = None
        self.images: list[str] = []
        self.image_key: str | None = None
        self.schedule_hours: float = 0
        self.packages: set[str] = set()
        self.flushes: list[FakeFlush] = []
        self.applied = 0
        self.upgrades = 0
        self.service_running = False
        self.service_restarts = 0
        self.removed = False
        self.progress: list[str] = []
        # knobs
        self.rejected_tokens: set[str] = set()
        self.backend_rejected: str | None = None
        self.image_build_fails: str | None = None
        self._serial = itertools.count(1)

    # -- test helpers -----------------------------------------------------------------------------

    def add_runner(self, group: str = "default", status: RunnerStatus = "idle") -> FakeRunner:
        """Put a runner in place as if it had been created earlier (for tests)."""
        runner = FakeRunner(
            name=f"fake-{group}-{next(self._serial)}",
            group=group,
            status=status,
            token=self._token(),
        )
        self.runners[runner.name] = runner
        return runner

    def _token(self) -> str:
        return token_id(self.config["github"]["token"]) if self.config else ""

    def _say(self, progress: Progress | None, message: str) -> None:
        self.progress.append(message)
        if progress is not None:
            progress(message)

    # -- ManagerInterface -------------------------------------------------------------------------

    def apply(self, state: CharmState, progress: Progress | None = None) -> None:
        """Check, install, build and restart as the real manager would; runners change at
        the next `reconcile`."""
        token = state.token.get_secret_value()
        if token in self.rejected_tokens:
            raise TokenRejectedError(token_rejected_message("401 Bad credentials"))
        missing = needed_packages(state) - self.packages
        if missing:
            self._say(progress, f"installing {', '.join(sorted(missing))}")
            self.packages |= missing
        inputs = image_inputs(state)
        image_missing: ImageMissingError | None = None
        if inputs is not None and self.image_key != inputs.key():
            self._say(progress, f"building the runner image {state.image} from {state.base_image}")
            if self.image_build_fails is None:
                self.images.append(state.image)
                self.image_key = inputs.key()
            elif not self.images:  # reported once the service runs, as the real manager does
                image_missing = ImageMissingError(
                    image_missing_message(state.image, self.image_build_fails)
                )
        self.schedule_hours = state.image_build_interval / 3600 if inputs is not None else 0
        if self.backend_rejected is not None:
            raise BackendRejectedError(
                backend_rejected_message(backends_used(state)[0], self.backend_rejected)
            )
        new = state.to_manager_config()
        change = plan_change(self.config, new)
        if change.flush_old:
            self._flush(flush_busy=False)
        if change.changed:
            self.config = new
            self.service_restarts += 0 if change.first else 1
        self.service_running = True
        self.removed = False
        self.state = state
        self.applied += 1
        if image_missing is not None:
            raise image_missing

    def upgrade(self, state: CharmState | None, progress: Progress | None = None) -> None:
        """Flush idle runners, then apply (rebuilding what changed) and restart."""
        self.upgrades += 1
        if self.config is not None:
            self._flush(flush_busy=False)
        if state is not None:
            self.apply(state, progress)
        if self.config is not None:
            self.service_restarts += 1
            self.service_running = True

    def remove(self) -> int:
        """Flush everything, forget the service, the schedule and the images."""
        removed = self._flush(flush_busy=True)
        self.service_running = False
        self.schedule_hours = 0
        self.images.clear()
        self.image_key = None
        self.config = None
        self.removed = True
        return removed

    def reconcile(self) -> int:
        """Create missing idle runners and remove surplus idle and offline ones."""
        state = self._require_state()
        removed = 0
        groups = {group.name: group for group in state.runner_groups}
        for runner in list(self.runners.values()):
            gone_group = runner.group not in groups
            if runner.status == "offline" or (gone_group and runner.status != "busy"):
                del self.runners[runner.name]
                removed += 1
        created = 0
        for group in state.runner_groups:
            members = [r for r in self.runners.values() if r.group == group.name]
            idle = [r for r in members if r.status == "idle"]
            surplus = max(len(idle) - group.min_idle, len(members) - group.max_runners, 0)
            for runner in idle[:surplus]:
                del self.runners[runner.name]
                removed += 1
            members = [r for r in self.runners.values() if r.group == group.name]
            idle_count = sum(1 for r in members if r.status == "idle")
            wanted = min(group.min_idle - idle_count, group.max_runners - len(members))
            if state.max_total_runners:
                wanted = min(wanted, state.max_total_runners - len(self.runners))
            for _ in range(max(wanted, 0)):
                self.add_runner(group.name, "idle")
                created += 1
        return created - removed

    def flush(self, flush_busy: bool) -> int:
        """Remove idle, offline and unknown runners, and busy ones when `flush_busy`."""
        return self._flush(flush_busy)

    def _flush(self, flush_busy: bool) -> int:
        doomed = [
            name for name, runner in self.runners.items() if runner.status != "busy" or flush_busy
        ]
        for name in doomed:
            del self.runners[name]
        self.flushes.append(FakeFlush(flush_busy, self._token(), len(doomed)))
        return len(doomed)

    def check_runners(self) -> dict[str, Any]:
        """Counts of the in-memory runners by status."""
        self._require_state()
        counts = Counter(runner.status for runner in self.runners.values())
        return {
            "online": counts["idle"] + counts["busy"],
            "busy": counts["busy"],
            "offline": counts["offline"],
            "unknown": counts["unknown"],
            "runners": ", ".join(sorted(self.runners)),
        }

    def update_runner_bin(self) -> dict[str, Any]:
        """ "Download" the fake runner application once; later calls find it current."""
        self._require_state()
        url = f"memory://runner-app/actions-runner-linux-x64-{self.FAKE_RUNNER_VERSION}.tar.gz"
        updated = self.runner_binary is None
        if updated:
            content = f"fake runner application {self.FAKE_RUNNER_VERSION}".encode()
            self.runner_binary = {
                "version": self.FAKE_RUNNER_VERSION,
                "url": url,
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        assert self.runner_binary is not None
        return {**self.runner_binary, "updated": updated}

    def build_image(self) -> dict[str, Any]:
        """Record a new image named after the configured one (no image is really built)."""
        state = self._require_state()
        started = time.monotonic()
        image = f"{state.image}-{secrets.token_hex(4)}"
        self.images.append(image)
        return {"image": image, "seconds": round(time.monotonic() - started, 3)}

    def dump_config(self) -> str:
        """The applied configuration in the manager's config-file form, secrets redacted."""
        state = self._require_state()
        return yaml.safe_dump(state.to_manager_config(redact=True), sort_keys=False)

    def summary(self) -> str:
        """Like "3 runners: 1 idle, 2 busy" (offline and unknown only when there are some)."""
        return summary_line(Counter(runner.status for runner in self.runners.values()))

    def _require_state(self) -> CharmState:
        if self.state is None:
            raise ManagerError("no valid configuration has been applied yet; fix the config first")
        return self.state


# ----------------------------------------------------------------------------------- real
def _default_unit_name() -> str:
    unit = os.environ.get("JUJU_UNIT_NAME", "")
    return unit.replace("/", "-") if unit else socket.gethostname()


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class RealManager:
    """The charm's `ManagerInterface` over the real `github_runner_manager`.

    Args:
        layout: where things live on the unit (default: /var/lib/github-runner and friends).
        unit_name: the manager's unit name (default: `JUJU_UNIT_NAME` with `/` as `-`).
        run: runs commands (apt-get, systemctl, lxd, docker); tests inject a recorder.
        use_systemd: services as systemd units; default: when systemd is PID 1.
        overrides: deep-merged over the generated manager config (tests: the emulator's URL,
            fake backend settings, free ports).
        python: the interpreter the service and the cron entry run with.
        embedded_redis_port: where the embedded redis-server listens (no Redis configured).
        health_interval: seconds between checks of the token and backends while nothing changes.
        clock: epoch clock.
    """

    def __init__(
        self,
        *,
        layout: Layout | None = None,
        unit_name: str | None = None,
        run: CommandRunner = charm_service.run_command,
        use_systemd: bool | None = None,
        overrides: Mapping[str, Any] | None = None,
        python: str = sys.executable,
        embedded_redis_port: int = 6379,
        health_interval: float = HEALTH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout or Layout()
        self.unit_name = unit_name or _default_unit_name()
        self.run = run
        self.use_systemd = charm_service.systemd_is_init() if use_systemd is None else use_systemd
        self.overrides = dict(overrides or {})
        self.python = python
        self.embedded_redis_port = embedded_redis_port
        self.health_interval = health_interval
        self.clock = clock
        self.service = charm_service.make_service(
            charm_service.MANAGER_SERVICE,
            self.layout,
            use_systemd=self.use_systemd,
            run=run,
            description="GitHub runner manager (github-runner charm)",
            after=(f"{charm_service.DISTRO_REDIS_UNIT}.service",),
        )

    # -- plumbing ---------------------------------------------------------------------------------

    def manager_config(self, state: CharmState) -> dict[str, Any]:
        """The manager's config mapping for `state`, with this unit's own settings."""
        data = state.to_manager_config()
        data["unit"] = self.unit_name
        data["state_dir"] = str(self.layout.state_dir)
        data["metrics_listen"] = f"127.0.0.1:{METRICS_PORT}"
        if "webhook" in data:
            data["webhook"]["listen"] = f"0.0.0.0:{WEBHOOK_PORT}"
        if state.redis_url is None:
            data["redis"] = {"url": f"redis://127.0.0.1:{self.embedded_redis_port}/0"}
        fake = data.get("backends", {}).get("fake")
        if fake is not None:
            # the service and the hooks must see the same fake instances
            fake.setdefault("state_file", str(self.layout.state_dir / "fake-instances.json"))
            fake.setdefault("work_dir", str(self.layout.state_dir / "fake-work"))
        return _deep_merge(data, self.overrides)

    def _parse(self, mapping: Mapping[str, Any]) -> ManagerConfig:
        from github_runner_manager.config import ConfigError, parse_config

        try:
            return parse_config(mapping)
        except ConfigError as exc:
            raise ManagerBlockedError(
                f"the runner manager refused the configuration: {exc}"
            ) from None

    def _current_mapping(self) -> dict[str, Any] | None:
        try:
            data = yaml.safe_load(self.layout.config_file.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    def _current_config(self) -> ManagerConfig:
        mapping = self._current_mapping()
        if mapping is None:
            raise ManagerError("no valid configuration has been applied yet; fix the config first")
        return self._parse(mapping)

    def _bookkeeping(self) -> dict[str, Any]:
        return charm_service.read_json(self.layout.charm_state_file)

    def _save_bookkeeping(self, data: Mapping[str, Any]) -> None:
        charm_service.write_private_file(
            self.layout.charm_state_file, json.dumps(data, indent=1, sort_keys=True) + "\n"
        )

    def _update_bookkeeping(self, **fields: Any) -> None:
        data = self._bookkeeping()
        data.update(fields)
        self._save_bookkeeping(data)

    @contextlib.contextmanager
    def _manager(self, cfg: ManagerConfig | None = None) -> Iterator[RunnerManager]:
        """A `RunnerManager` for one action, closed afterwards; library errors → ManagerError."""
        from github_runner_manager.manager import RunnerManager

        cfg = cfg or self._current_config()
        with self._errors():
            manager = RunnerManager(cfg, config_path=self.layout.config_file)
            try:
                yield manager
            finally:
                manager.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Library errors as `ManagerError`s an operator can act on (classes, never text)."""
        from github_runner_manager.backends.base import (
            AuthError,
            BackendConfigError,
            BackendError,
            MissingDependencyError,
        )
        from github_runner_manager.config import ConfigError
        from github_runner_manager.github import GitHubAuthError, GitHubError
        from github_runner_manager.image import ImageBuildError
        from github_runner_manager.runner_binary import RunnerBinaryError
        from github_runner_manager.store import StoreUnavailable

        try:
            yield
        except ManagerError:
            raise
        except GitHubAuthError as exc:
            raise TokenRejectedError(token_rejected_message(_status_text(exc))) from None
        except AuthError as exc:
            raise BackendRejectedError(backend_rejected_message("configured", str(exc))) from None
        except (BackendConfigError, MissingDependencyError) as exc:
            raise ManagerBlockedError(f"backend-config: {exc}") from None
        except ConfigError as exc:
            raise ManagerBlockedError(
                f"the runner manager refused the configuration: {exc}"
            ) from None
        except StoreUnavailable as exc:
            raise ManagerError(f"Redis is unavailable: {exc}") from None
        except GitHubError as exc:
            raise ManagerError(f"GitHub: {exc}") from None
        except BackendError as exc:
            raise ManagerError(f"backend: {exc}") from None
        except RunnerBinaryError as exc:
            raise ManagerError(f"runner binary: {exc}") from None
        except ImageBuildError as exc:
            raise ManagerError(f"image build: {exc}") from None
        except CommandError as exc:
            raise ManagerError(str(exc)) from None

    def _service_command(self) -> tuple[list[str], dict[str, str]]:
        import github_runner_manager

        library_root = Path(github_runner_manager.__file__).resolve().parent.parent
        charm_src = Path(__file__).resolve().parent
        path = os.pathsep.join(dict.fromkeys([str(library_root), str(charm_src)]))
        command = [
            self.python, "-m", "github_runner_manager.cli",
            "--config", str(self.layout.config_file), "run",
        ]  # fmt: skip
        env = {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **charm_service.proxy_environment()}
        return command, env

    # -- steps of apply ---------------------------------------------------------------------------

    def _ensure_packages(self, state: CharmState, progress: Progress) -> None:
        book = self._bookkeeping()
        installed = set(book.get("packages", []))
        missing = needed_packages(state) - installed
        if missing:
            progress(f"installing {', '.join(sorted(missing))}")
            charm_service.apt_install(missing, self.run)
            self._update_bookkeeping(packages=sorted(installed | missing))
        if "lxd" in backends_used(state) and not book.get("lxd_ready"):
            progress("installing and initialising LXD")
            charm_service.ensure_lxd(self._pool_dir(state), self.run)
            self._update_bookkeeping(lxd_ready=True)
        self._ensure_logrotate()

    def _pool_dir(self, state: CharmState) -> Path:
        if state.runner_storage == "memory":
            ram = self.layout.base_dir / "ram-pool"
            ram.mkdir(parents=True, exist_ok=True)
            if str(ram) not in Path("/proc/mounts").read_text():
                size = sum(g.disk * g.max_runners for g in state.runner_groups) or 1024**3
                self.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(ram)])
            return ram / "lxd"
        return Path("/var/lib/github-runner/storage/lxd")

    def _ensure_logrotate(self) -> None:
        text = (
            f"{self.layout.log_dir}/*.log {{\n  weekly\n  rotate 4\n  compress\n"
            "  missingok\n  notifempty\n  copytruncate\n}\n"
        )
        with contextlib.suppress(OSError):
            charm_service.write_private_file(self.layout.logrotate_path, text, mode=0o644)

    def _ensure_redis(self, progress: Progress) -> None:
        """Start the embedded redis-server (no Redis configured) and wait until it answers."""
        import redis

        url = f"redis://127.0.0.1:{self.embedded_redis_port}/0"

        def answers() -> bool:
            try:
                client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
                with contextlib.closing(client):
                    return bool(client.ping())
            except redis.RedisError:
                return False

        if answers():
            return
        progress("starting the embedded redis-server")
        if self.use_systemd:
            self.run(["systemctl", "enable", "--now", f"{charm_service.DISTRO_REDIS_UNIT}.service"])
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                raise ManagerError("redis-server is not installed; the next hook retries")
            self.layout.redis_dir.mkdir(parents=True, exist_ok=True)
            redis_service = charm_service.SupervisedProcess(
                charm_service.REDIS_SERVICE, self.layout, self.python
            )
            redis_service.install(
                [
                    binary, "--port", str(self.embedded_redis_port), "--bind", "127.0.0.1",
                    "--dir", str(self.layout.redis_dir), "--appendonly", "yes",
                    "--protected-mode", "yes",
                ],
                {},
            )  # fmt: skip
            redis_service.start()
        deadline = time.monotonic() + 30
        while not answers():
            if time.monotonic() > deadline:
                raise ManagerError(f"the embedded redis-server does not answer at {url}")
            time.sleep(0.1)

    def _check_github(self, cfg: ManagerConfig) -> None:
        """One listing per target with the (new) token: 401/403 → TokenRejectedError."""
        from github_runner_manager.github import GitHubAuthError, GitHubClient, GitHubError

        token = cfg.github.resolve_token().get_secret_value()
        client = GitHubClient(
            cfg.github.url, token, timeout=cfg.github.timeout, max_wait=30, max_attempts=2
        )
        try:
            for path in cfg.github.paths:
                client.list_runners(path)
        except GitHubAuthError as exc:
            raise TokenRejectedError(token_rejected_message(_status_text(exc))) from None
        except GitHubError as exc:
            raise ManagerError(f"GitHub cannot be reached to check the token: {exc}") from None
        finally:
            client.close()

    def _check_backends(self, cfg: ManagerConfig) -> None:
        """Build each backend and let it check each group (credentials, image, size)."""
        from github_runner_manager.backends.base import (
            AuthError,
            BackendConfigError,
            BackendError,
            MissingDependencyError,
        )
        from github_runner_manager.backends.registry import create_backend

        for name in dict.fromkeys(b for g in cfg.runner_groups for b in g.backend_order):
            try:
                backend = create_backend(name, cfg.backend_settings(name), prefix=cfg.prefix)
            except (BackendConfigError, MissingDependencyError) as exc:
                raise ManagerBlockedError(f"backend-config: {exc}") from None
            except AuthError as exc:
                raise BackendRejectedError(backend_rejected_message(name, str(exc))) from None
            try:
                for group in cfg.runner_groups:
                    if name in group.backend_order:
                        backend.validate(group)
            except AuthError as exc:
                raise BackendRejectedError(backend_rejected_message(name, str(exc))) from None
            except BackendConfigError as exc:
                raise ManagerBlockedError(f"backend-config: {exc}") from None
            except BackendError as exc:
                raise ManagerBlockedError(
                    f"backend {name} cannot run group {group.name}: {exc}"
                ) from None
            finally:
                with contextlib.suppress(Exception):
                    backend.close()

    def _binary_cache(self, cfg: ManagerConfig) -> Any:
        from github_runner_manager.github import GitHubClient
        from github_runner_manager.runner_binary import RunnerBinaryCache

        token = cfg.github.resolve_token().get_secret_value()
        github = GitHubClient(cfg.github.url, token, timeout=cfg.github.timeout, max_wait=60)
        return RunnerBinaryCache(cfg.state_dir / "runner-binary", github, cfg.github.paths[0])

    def _ensure_runner_binary(self, cfg: ManagerConfig, progress: Progress) -> Any:
        cache = self._binary_cache(cfg)
        try:
            current = cache.current()
            if current is not None:
                return current
            progress("downloading the GitHub runner application (sha256-verified)")
            with self._errors():
                return cache.update()
        finally:
            cache.github.close()

    def _build_image(
        self, inputs: ImageInputs, cfg: ManagerConfig, progress: Progress
    ) -> charm_service.BuiltImage:
        binary = self._ensure_runner_binary(cfg, progress)
        progress(f"building the runner image {inputs.image} from {inputs.base_image} (minutes)")
        with self._errors():
            built = charm_service.build_image(
                inputs, binary.path, binary.sha256, binary.version, cfg.state_dir, self.run
            )
        self._update_bookkeeping(
            image={"key": inputs.key(), "name": built.image, "built_at": self.clock()}
        )
        return built

    def _ensure_image(
        self, state: CharmState, cfg: ManagerConfig, progress: Progress, *, force: bool = False
    ) -> None:
        inputs = image_inputs(state)
        if inputs is None:
            return
        built = self._bookkeeping().get("image") or {}
        if not force and built.get("key") == inputs.key():
            return
        try:
            self._build_image(inputs, cfg, progress)
        except ManagerError as exc:
            if built.get("name"):  # an older image is still there: new runners keep using it
                logger.warning("image rebuild failed, the previous image stays: %s", exc)
                return
            raise ImageMissingError(image_missing_message(state.image, str(exc))) from None

    def _ensure_schedule(self, state: CharmState) -> None:
        from github_runner_manager import image

        inputs = image_inputs(state)
        hours = int(state.image_build_interval // 3600)
        if inputs is None or hours <= 0:
            image.remove_schedule(self.layout.cron_path)
            return
        command = charm_service.image_build_command(
            self.python, self.layout.config_file, self.layout.charm_state_file
        )
        _, env = self._service_command()
        image.schedule_build_runner_image(
            hours,
            command,
            self.layout.cron_path,
            self.layout.log_dir / "image-build.log",
            env={"PYTHONPATH": env["PYTHONPATH"]},
        )

    def _flush_with(self, mapping: Mapping[str, Any], flush_busy: bool, why: str) -> int:
        """Flush with a configuration (the old one: its token sees what it registered)."""
        try:
            with self._manager(self._parse(mapping)) as manager:
                removed = manager.flush(flush_busy=flush_busy)
        except ManagerError as exc:
            logger.warning("flush (%s) with the previous configuration failed: %s", why, exc)
            return 0
        logger.info("flushed %d runners (%s) with the previous configuration", removed, why)
        return int(removed)

    def _health_due(self, digest: str) -> bool:
        health = self._bookkeeping().get("health") or {}
        return (
            health.get("ok_key") != digest
            or self.clock() - float(health.get("ok_at", 0)) > self.health_interval
        )

    # -- ManagerInterface -------------------------------------------------------------------------

    def apply(self, state: CharmState, progress: Progress | None = None) -> None:
        """See `ManagerInterface.apply`; nothing changes before the new token is known good."""
        say = progress or (lambda _message: None)
        mapping = self.manager_config(state)
        cfg = self._parse(mapping)
        with self._errors():
            self._ensure_packages(state, say)
        if state.redis_url is None:
            self._ensure_redis(say)
        old = self._current_mapping()
        change = plan_change(old, mapping)
        digest = hashlib.sha256(json.dumps(mapping, sort_keys=True).encode()).hexdigest()
        due = change.changed or self._health_due(digest)
        if due:
            self._check_github(cfg)
        used = set(backends_used(state))
        if "fake" in used and mapping["backends"]["fake"].get("mode") == "local":
            self._ensure_runner_binary(cfg, say)
        self.remember_image_inputs(state)
        image_missing: ImageMissingError | None = None
        try:
            self._ensure_image(state, cfg, say)
        except ImageMissingError as exc:  # the service may run meanwhile; build-image retries
            image_missing = exc
        with self._errors():
            self._ensure_schedule(state)
        if due and image_missing is None:
            self._check_backends(cfg)
            self._update_bookkeeping(health={"ok_key": digest, "ok_at": self.clock()})
        command, env = self._service_command()
        if change.changed:
            if old is not None:
                self.service.stop()
            if change.flush_old and old is not None:
                say(
                    f"removing idle runners of the previous configuration ({', '.join(change.reasons)})"
                )
                self._flush_with(old, flush_busy=False, why=", ".join(change.reasons) + " changed")
            charm_service.write_private_file(
                self.layout.config_file, yaml.safe_dump(mapping, sort_keys=False)
            )
        with self._errors():
            installed = self.service.install(command, env)
            if change.changed or installed:
                say("restarting the runner manager" if old else "starting the runner manager")
                self.service.restart()
            elif not self.service.running():
                logger.warning("the runner manager service was not running; starting it")
                self.service.start()
        if image_missing is not None:
            raise image_missing

    def upgrade(self, state: CharmState | None, progress: Progress | None = None) -> None:
        """See `ManagerInterface.upgrade`."""
        say = progress or (lambda _message: None)
        current = self._current_mapping()
        if current is not None:
            self.service.stop()
            say("removing idle runners before the upgrade")
            self._flush_with(current, flush_busy=False, why="charm upgrade")
        if state is not None:
            self.apply(state, say)  # starts the stopped service with the new code
        elif current is not None:
            command, env = self._service_command()
            with self._errors():
                self.service.install(command, env)
                self.service.restart()

    def remove(self) -> int:
        """See `ManagerInterface.remove`; every step is best effort and idempotent."""
        from github_runner_manager import image

        current = self._current_mapping()
        removed = 0
        with contextlib.suppress(CommandError):
            self.service.stop()
        if current is not None:
            removed = self._flush_with(current, flush_busy=True, why="unit removal")
        with contextlib.suppress(CommandError):
            self.service.remove()
        image.remove_schedule(self.layout.cron_path)
        built = self._bookkeeping().get("image") or {}
        if built.get("name"):
            charm_service.remove_images(built["name"], self.layout.state_dir, self.run)
        if not self.use_systemd:
            charm_service.SupervisedProcess(charm_service.REDIS_SERVICE, self.layout).remove()
        self.layout.config_file.unlink(missing_ok=True)
        self.layout.logrotate_path.unlink(missing_ok=True)
        book = self._bookkeeping()
        book.pop("image", None)
        book.pop("health", None)
        self._save_bookkeeping(book)
        return removed

    def reconcile(self) -> int:
        """One reconcile pass in this process (the service keeps reconciling on its own)."""
        with self._manager() as manager:
            return int(manager.reconcile())

    def flush(self, flush_busy: bool) -> int:
        """Flush this unit's runners now."""
        with self._manager() as manager:
            return int(manager.flush(flush_busy=flush_busy))

    def check_runners(self) -> dict[str, Any]:
        """This unit's runners as GitHub lists them (and prefixed runners nobody records)."""
        with self._manager() as manager:
            infos = list(manager.get_github_info())
            records = [r for r in manager.store.list_runners() if r.unit == self.unit_name]
        mine = [i for i in infos if i.unit in (self.unit_name, None)]
        listed = {i.name for i in mine}
        online = [i for i in mine if i.status == "online"]
        return {
            "online": len(online),
            "busy": sum(1 for i in mine if i.busy),
            "offline": sum(1 for i in mine if i.status != "online"),
            "unknown": sum(1 for i in mine if i.unit is None)
            + sum(1 for r in records if r.name not in listed),
            "runners": ", ".join(sorted(listed)),
        }

    def update_runner_bin(self) -> dict[str, Any]:
        """Download the latest runner application when GitHub offers a newer one."""
        cfg = self._current_config()
        cache = self._binary_cache(cfg)
        try:
            with self._errors():
                updated = cache.check()
                binary = cache.update() if updated else cache.current()
        finally:
            cache.github.close()
        return {
            "version": binary.version,
            "url": binary.url,
            "sha256": binary.sha256,
            "updated": bool(updated),
        }

    def build_image(self) -> dict[str, Any]:
        """Build the runner image now (for every backend that uses the charm's image)."""
        cfg = self._current_config()
        saved = self._bookkeeping().get("image_inputs")
        state_inputs = ImageInputs(**saved) if isinstance(saved, dict) else None
        if state_inputs is None:
            raise ManagerError(
                "no runner group uses a backend whose image the charm builds (lxd, docker)"
            )
        built = self._build_image(state_inputs, cfg, lambda _message: None)
        return {"image": built.image, "seconds": round(built.seconds, 1)}

    def dump_config(self) -> str:
        """The manager's effective configuration (defaults filled in), secrets redacted."""
        from github_runner_manager.config import dump_config

        return dump_config(self._current_config())

    def summary(self) -> str:
        """This unit's runners by state, from the shared Redis records; creates that keep failing
        (the manager backs off) are named with their last error."""
        from github_runner_manager.manager import read_create_backoffs
        from github_runner_manager.store import Store

        cfg = self._current_config()
        with self._errors():
            store = Store.from_config(cfg.redis)
            try:
                records = [r for r in store.list_runners() if r.unit == self.unit_name]
                backoffs = read_create_backoffs(
                    store, max_age=cfg.create_backoff_max + 60, unit=self.unit_name
                )
            finally:
                store.close()
        line = summary_line(Counter(r.state.value for r in records))
        if backoffs:
            groups = ", ".join(sorted({b["group"] for b in backoffs}))
            line += f"; creates failing for {groups} (retrying): {backoffs[0]['error'][:120]}"
        return line

    def remember_image_inputs(self, state: CharmState) -> None:
        """Keep the image inputs for the `build-image` action (they are not in the manager config)."""
        inputs = image_inputs(state)
        self._update_bookkeeping(image_inputs=dataclasses.asdict(inputs) if inputs else None)

    def stop_service(self) -> None:
        """Stop the manager service (tests, and before the unit goes)."""
        self.service.stop()


def _status_text(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status}" if status else "refused"
