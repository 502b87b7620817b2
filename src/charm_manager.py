# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""The narrow interface the charm drives the runner manager through, and an in-memory fake.

The charm never talks to `github_runner_manager` directly: it holds a `ManagerInterface`, so
its tests can put `FakeManager` in the real manager's place. `FakeManager` is a working
manager of imaginary machines: it keeps real counts, creates and removes its in-memory runners,
and reports only what it did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import secrets
import time
from collections import Counter
from typing import Any, Literal, Protocol, runtime_checkable

import yaml

from charm_state import CharmState

RunnerStatus = Literal["idle", "busy", "offline", "unknown"]
CHECK_RUNNERS_KEYS = ("online", "busy", "offline", "unknown", "runners")
UPDATE_RUNNER_BIN_KEYS = ("version", "url", "sha256", "updated")
BUILD_IMAGE_KEYS = ("image", "seconds")


class ManagerError(Exception):
    """The manager could not do what was asked; the message tells the operator what to do."""


@runtime_checkable
class ManagerInterface(Protocol):
    """What the charm asks of the runner manager; nothing more.

    Every method either does the work and reports it, or raises `ManagerError` with a message
    an operator can act on.
    """

    def apply(self, state: CharmState) -> None:
        """Make `state` the manager's configuration (runners converge to it over time)."""

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


@dataclasses.dataclass
class FakeRunner:
    """One imaginary runner."""

    name: str
    group: str
    status: RunnerStatus = "idle"


class FakeManager:
    """An in-memory `ManagerInterface`: runners are records in a dict, nothing else exists.

    Reconciling keeps each group's `min_idle` idle runners within `max_runners` and
    `max_total_runners`, never removes a busy runner and removes offline ones. Tests reach in
    through `runners` and `add_runner` to set the scene.
    """

    FAKE_RUNNER_VERSION = "0.0.0-fake"

    def __init__(self) -> None:
        self.state: CharmState | None = None
        self.runners: dict[str, FakeRunner] = {}
        self.runner_binary: dict[str, Any] | None = None
        self.images: list[str] = []
        self.applied = 0
        self._serial = itertools.count(1)

    # -- test helpers -----------------------------------------------------------------------------

    def add_runner(self, group: str = "default", status: RunnerStatus = "idle") -> FakeRunner:
        """Put a runner in place as if it had been created earlier (for tests)."""
        runner = FakeRunner(name=f"fake-{group}-{next(self._serial)}", group=group, status=status)
        self.runners[runner.name] = runner
        return runner

    # -- ManagerInterface -------------------------------------------------------------------------

    def apply(self, state: CharmState) -> None:
        """Remember `state`; runners change at the next `reconcile`."""
        self.state = state
        self.applied += 1

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
        doomed = [
            name for name, runner in self.runners.items() if runner.status != "busy" or flush_busy
        ]
        for name in doomed:
            del self.runners[name]
        return len(doomed)

    def check_runners(self) -> dict[str, Any]:
        """Counts of the in-memory runners by status."""
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
        counts = Counter(runner.status for runner in self.runners.values())
        total = len(self.runners)
        parts = [f"{counts['idle']} idle", f"{counts['busy']} busy"]
        parts += [
            f"{counts[status]} {status}" for status in ("offline", "unknown") if counts[status]
        ]
        return f"{total} runner{'' if total == 1 else 's'}: {', '.join(parts)}"

    def _require_state(self) -> CharmState:
        if self.state is None:
            raise ManagerError("no valid configuration has been applied yet; fix the config first")
        return self.state
