#!/usr/bin/env python3
# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""The github-runner charm: Juju events in, one holistic `_reconcile()`, status in one place.

The charm only translates: Juju config, secrets and relations become a `CharmState`
(`charm_state.py`), which is handed to the runner manager through `ManagerInterface`
(`charm_manager.py`). The manager does the work and raises when it cannot; the charm turns
that into a blocked status or a failed action with a message the operator can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import ops

from charm_manager import (
    BUILD_IMAGE_KEYS,
    CHECK_RUNNERS_KEYS,
    UPDATE_RUNNER_BIN_KEYS,
    FakeManager,
    ManagerError,
    ManagerInterface,
)
from charm_state import RUNNER_STORAGES, CharmConfigInvalidError, CharmState

logger = logging.getLogger(__name__)

REDIS_PENDING_MESSAGE = "waiting for the redis relation to publish its hostname and port"


class GithubRunnerCharm(ops.CharmBase):
    """Keeps a fleet of ephemeral GitHub Actions runners as the operator configured it."""

    _stored = ops.StoredState()

    #: Makes the manager the charm drives. It is the in-memory `FakeManager` until the charm is
    #: wired to the `github_runner_manager` service (issue 6); tests replace it, for example
    #: `monkeypatch.setattr(GithubRunnerCharm, "manager_factory", lambda: fake)`.
    manager_factory: ClassVar[Callable[[], ManagerInterface]] = FakeManager

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(runner_storage="")
        self._manager: ManagerInterface = type(self).manager_factory()
        self._state: CharmState | None = None
        self._state_error: CharmConfigInvalidError | None = None

        for event in (
            self.on.install,
            self.on.start,
            self.on.config_changed,
            self.on.upgrade_charm,
            self.on.update_status,
            self.on.secret_changed,
            self.on.redis_relation_joined,
            self.on.redis_relation_changed,
            self.on.redis_relation_departed,
            self.on.redis_relation_broken,
        ):
            framework.observe(event, self._on_state_changed)
        framework.observe(self.on.stop, self._on_stop)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)

        framework.observe(self.on.check_runners_action, self._on_check_runners_action)
        framework.observe(self.on.reconcile_runners_action, self._on_reconcile_runners_action)
        framework.observe(self.on.flush_runners_action, self._on_flush_runners_action)
        framework.observe(self.on.update_runner_bin_action, self._on_update_runner_bin_action)
        framework.observe(self.on.build_image_action, self._on_build_image_action)
        framework.observe(self.on.dump_config_action, self._on_dump_config_action)

    # -- the one place that acts ------------------------------------------------------------------

    def _reconcile(self, *, stopping: bool = False) -> CharmState | None:
        """Bring the manager in line with what the operator configured.

        Invalid config leaves the manager as it was (nothing is deleted) and is reported by
        the status. When the unit stops, every runner is removed, busy ones included.

        Returns:
            The state the manager now has, or None when the config is invalid (or Redis is not
            known yet, or the unit is stopping).
        """
        if stopping:
            removed = self._manager.flush(flush_busy=True)
            logger.info("unit stopping: removed %d runners", removed)
            return None
        self._record_runner_storage()
        state = self._load_state()
        if state is None or state.redis_pending:
            return None
        self._manager.apply(state)
        return state

    def _record_runner_storage(self) -> None:
        """Remember `runner-storage` as first set (at install); it may not change later."""
        value = self.config.get("runner-storage")
        if not self._stored.runner_storage and value in RUNNER_STORAGES:
            self._stored.runner_storage = value

    def _load_state(self) -> CharmState | None:
        """Validate the config; remember the state or the error for the status."""
        try:
            state = CharmState.from_charm(self, self._stored.runner_storage or None)
        except CharmConfigInvalidError as err:
            logger.warning("configuration is invalid: %s", err)
            self._state, self._state_error = None, err
            return None
        self._state, self._state_error = state, None
        return state

    # -- events -----------------------------------------------------------------------------------

    def _on_state_changed(self, _: ops.EventBase) -> None:
        self._reconcile()

    def _on_stop(self, _: ops.StopEvent) -> None:
        self._reconcile(stopping=True)

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        if self._state is None and self._state_error is None:
            self._load_state()
        if self._state_error is not None:
            event.add_status(ops.BlockedStatus(str(self._state_error)))
        elif self._state is not None and self._state.redis_pending:
            event.add_status(ops.WaitingStatus(REDIS_PENDING_MESSAGE))
        else:
            event.add_status(ops.ActiveStatus(self._manager.summary()))

    # -- actions ----------------------------------------------------------------------------------

    def _run_action(
        self, event: ops.ActionEvent, work: Callable[[], dict[str, Any]], keys: Sequence[str]
    ) -> None:
        """Apply the current config, do `work`, and return exactly `keys` from its result."""
        if self._reconcile() is None:
            if self._state_error is not None:
                event.fail(f"the configuration is invalid, fix it first: {self._state_error}")
            else:
                event.fail(f"not ready: {REDIS_PENDING_MESSAGE}")
            return
        try:
            results = work()
        except ManagerError as err:
            event.fail(str(err))
            return
        event.set_results({key: _result_value(results[key]) for key in keys})

    def _on_check_runners_action(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._manager.check_runners, CHECK_RUNNERS_KEYS)

    def _on_reconcile_runners_action(self, event: ops.ActionEvent) -> None:
        self._run_action(event, lambda: {"delta": self._manager.reconcile()}, ("delta",))

    def _on_flush_runners_action(self, event: ops.ActionEvent) -> None:
        flush_busy = bool(event.params.get("flush-busy", False))
        self._run_action(
            event, lambda: {"flushed": self._manager.flush(flush_busy=flush_busy)}, ("flushed",)
        )

    def _on_update_runner_bin_action(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._manager.update_runner_bin, UPDATE_RUNNER_BIN_KEYS)

    def _on_build_image_action(self, event: ops.ActionEvent) -> None:
        self._run_action(event, self._manager.build_image, BUILD_IMAGE_KEYS)

    def _on_dump_config_action(self, event: ops.ActionEvent) -> None:
        self._run_action(event, lambda: {"config": self._manager.dump_config()}, ("config",))


def _result_value(value: Any) -> Any:
    """Action results as Juju shows them: booleans as `true`/`false`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


if __name__ == "__main__":  # pragma: no cover
    ops.main(GithubRunnerCharm)
