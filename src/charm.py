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

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import ops

import cos
from charm_manager import (
    BUILD_IMAGE_KEYS,
    CHECK_RUNNERS_KEYS,
    METRICS_PORT,
    UPDATE_RUNNER_BIN_KEYS,
    WEBHOOK_PORT,
    ImageMissingError,
    ManagerBlockedError,
    ManagerError,
    ManagerInterface,
    RealManager,
)
from charm_state import RUNNER_STORAGES, CharmConfigInvalidError, CharmState

logger = logging.getLogger(__name__)

REDIS_PENDING_MESSAGE = "waiting for the redis relation to publish its hostname and port"
SHARED_REDIS_MESSAGE = "several units need a shared Redis: relate to a redis charm or set redis-url"
REMOVING_MESSAGE = "removing the runners, the service and the images"
COS_RELATION = "cos-agent"


class GithubRunnerCharm(ops.CharmBase):
    """Keeps a fleet of ephemeral GitHub Actions runners as the operator configured it."""

    _stored = ops.StoredState()

    #: Makes the manager the charm drives: the real one (`RealManager`, the `github_runner_manager`
    #: service on the unit). Tests replace it, for example
    #: `monkeypatch.setattr(GithubRunnerCharm, "manager_factory", lambda: fake)`.
    manager_factory: ClassVar[Callable[[], ManagerInterface]] = RealManager

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(runner_storage="")
        self._manager: ManagerInterface = type(self).manager_factory()
        self._state: CharmState | None = None
        self._state_error: CharmConfigInvalidError | None = None
        self._blocked_message: str | None = None
        self._manager_error: ManagerError | None = None
        self._removing = False

        for event in (
            self.on.install,
            self.on.start,
            self.on.config_changed,
            self.on.update_status,
            self.on.secret_changed,
            self.on.redis_relation_joined,
            self.on.redis_relation_changed,
            self.on.redis_relation_departed,
            self.on.redis_relation_broken,
        ):
            framework.observe(event, self._on_state_changed)
        framework.observe(self.on.upgrade_charm, self._on_upgrade_charm)
        framework.observe(self.on.stop, self._on_stop)
        framework.observe(self.on.remove, self._on_stop)
        framework.observe(self.on[COS_RELATION].relation_joined, self._on_cos_agent)
        framework.observe(self.on[COS_RELATION].relation_changed, self._on_cos_agent)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)

        framework.observe(self.on.check_runners_action, self._on_check_runners_action)
        framework.observe(self.on.reconcile_runners_action, self._on_reconcile_runners_action)
        framework.observe(self.on.flush_runners_action, self._on_flush_runners_action)
        framework.observe(self.on.update_runner_bin_action, self._on_update_runner_bin_action)
        framework.observe(self.on.build_image_action, self._on_build_image_action)
        framework.observe(self.on.dump_config_action, self._on_dump_config_action)

    # -- the one place that acts ------------------------------------------------------------------

    def _reconcile(self) -> CharmState | None:
        """Bring the manager in line with what the operator configured.

        Invalid config leaves the manager as it was (nothing is deleted) and is reported by the
        status, and so does anything the manager refuses (a token GitHub rejects, credentials
        the backend rejects, a missing image).

        Returns:
            The state the manager was given, or None when there is nothing it can be given
            (invalid config, no shared Redis for several units, Redis not known yet).
        """
        state = self._usable_state()
        if state is None:
            return None
        self._update_cos()
        self._open_ports(state)
        self._manager_error = None
        try:
            self._manager.apply(state, self._progress)
        except ManagerError as err:
            logger.warning("the runner manager could not apply the configuration: %s", err)
            self._manager_error = err
        return state

    def _usable_state(self) -> CharmState | None:
        """The validated state when the manager may be given it; else None (status says why)."""
        self._record_runner_storage()
        state = self._load_state()
        if state is None or state.redis_pending:
            return None
        self._blocked_message = None
        if state.redis_source == "embedded" and self._unit_count() > 1:
            self._blocked_message = SHARED_REDIS_MESSAGE
            return None
        return state

    def _unit_count(self) -> int:
        try:
            return int(self.app.planned_units())
        except (ops.ModelError, RuntimeError):  # goal-state unavailable: count what we see
            return 1

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

    def _progress(self, message: str) -> None:
        """Show what a long step is doing while the hook runs (final status: collect-status)."""
        logger.info("%s", message)
        self.unit.status = ops.MaintenanceStatus(message)

    def _open_ports(self, state: CharmState) -> None:
        """The webhook endpoint is reachable only when webhooks are configured."""
        try:
            self.unit.set_ports(*([WEBHOOK_PORT] if state.webhook_secret is not None else []))
        except ops.ModelError as err:  # not fatal: the operator can still expose it by hand
            logger.warning("could not open the webhook port: %s", err)

    def _update_cos(self) -> None:
        """Tell the COS agent where the metrics are, with our dashboards and alert rules."""
        relations = self.model.relations.get(COS_RELATION, [])
        if not relations:
            return
        data = cos.cos_agent_data(
            app=self.app.name,
            model=self.model.name,
            model_uuid=self.model.uuid,
            metrics_port=METRICS_PORT,
        )
        text = json.dumps(data, sort_keys=True)
        for relation in relations:
            if relation.data[self.unit].get(cos.DATABAG_KEY) != text:
                relation.data[self.unit][cos.DATABAG_KEY] = text

    # -- events -----------------------------------------------------------------------------------

    def _on_state_changed(self, _: ops.EventBase) -> None:
        self._reconcile()

    def _on_upgrade_charm(self, _: ops.UpgradeCharmEvent) -> None:
        state = self._usable_state()
        self._update_cos()
        self._manager_error = None
        try:
            self._manager.upgrade(state, self._progress)
        except ManagerError as err:
            logger.warning("the runner manager could not complete the upgrade: %s", err)
            self._manager_error = err

    def _on_stop(self, _: ops.EventBase) -> None:
        self._removing = True
        self._progress(REMOVING_MESSAGE)
        removed = self._manager.remove()
        logger.info("unit going away: removed %d runners", removed)

    def _on_cos_agent(self, _: ops.RelationEvent) -> None:
        if self._reconcile() is None:  # the data goes out whatever the config
            self._update_cos()

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent) -> None:
        if self._removing:
            event.add_status(ops.MaintenanceStatus(REMOVING_MESSAGE))
            return
        if self._state is None and self._state_error is None:
            self._usable_state()
        if self._state_error is not None:
            event.add_status(ops.BlockedStatus(str(self._state_error)))
        elif self._blocked_message is not None:
            event.add_status(ops.BlockedStatus(self._blocked_message))
        elif self._state is not None and self._state.redis_pending:
            event.add_status(ops.WaitingStatus(REDIS_PENDING_MESSAGE))
        elif isinstance(self._manager_error, ManagerBlockedError):
            event.add_status(ops.BlockedStatus(str(self._manager_error)))
        elif self._manager_error is not None:
            event.add_status(ops.MaintenanceStatus(f"{self._manager_error}; retrying"))
        else:
            try:
                event.add_status(ops.ActiveStatus(self._manager.summary()))
            except ManagerError as err:
                event.add_status(ops.MaintenanceStatus(f"{err}; retrying"))

    # -- actions ----------------------------------------------------------------------------------

    def _run_action(
        self,
        event: ops.ActionEvent,
        work: Callable[[], dict[str, Any]],
        keys: Sequence[str],
        *,
        despite: tuple[type[ManagerError], ...] = (),
    ) -> None:
        """Apply the current config, do `work`, and return exactly `keys` from its result.

        Args:
            despite: manager refusals (blocked causes) the action runs regardless of, because
                it is their remedy (build-image for a missing image) or harmless (dump-config).
        """
        if self._reconcile() is None:
            if self._state_error is not None:
                event.fail(f"the configuration is invalid, fix it first: {self._state_error}")
            elif self._blocked_message is not None:
                event.fail(f"fix this first: {self._blocked_message}")
            else:
                event.fail(f"not ready: {REDIS_PENDING_MESSAGE}")
            return
        refusal = self._manager_error
        if isinstance(refusal, ManagerBlockedError) and not isinstance(refusal, despite):
            event.fail(f"the runner manager cannot use the configuration, fix it first: {refusal}")
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
        self._run_action(
            event, self._manager.build_image, BUILD_IMAGE_KEYS, despite=(ImageMissingError,)
        )

    def _on_dump_config_action(self, event: ops.ActionEvent) -> None:
        self._run_action(
            event,
            lambda: {"config": self._manager.dump_config()},
            ("config",),
            despite=(ManagerBlockedError,),
        )


def _result_value(value: Any) -> Any:
    """Action results as Juju shows them: booleans as `true`/`false`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


if __name__ == "__main__":  # pragma: no cover
    ops.main(GithubRunnerCharm)
