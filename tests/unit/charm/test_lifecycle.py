"""Every event against the faked manager: install, config, secrets, upgrade, stop/remove, statuses.

The fake follows the real manager's decisions (`plan_change`, packages, image builds); what it did
is read back from its records.
"""

from __future__ import annotations

import json

import pytest
from ops import testing

from charm import REMOVING_MESSAGE, SHARED_REDIS_MESSAGE
from charm_manager import FakeManager, ManagerError, token_id
from tests.unit.charm.helpers import TOKEN, TOKEN_SECRET, make_state

STATUS_EVENTS = ["install", "start", "config_changed", "upgrade_charm", "update_status"]


def rotated(token: str) -> tuple[testing.State, testing.Secret]:
    """The token secret now holds `token` (same secret id, new content), and that secret."""
    secret = testing.Secret({"token": token}, id=TOKEN_SECRET.id)
    return testing.State(config={"path": "acme", "token": secret.id}, secrets={secret}), secret


# -- install ----------------------------------------------------------------------------------


def test_install_installs_what_the_config_needs_and_says_so(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    out = ctx.run(ctx.on.install(), make_state({"backend": "lxd"}))
    assert {"redis-server", "nftables", "mmdebstrap", "cron"} <= fake_manager.packages
    assert fake_manager.images == ["github-runner-debian-bookworm"]
    assert fake_manager.schedule_hours == 6
    assert fake_manager.service_running
    shown = [status.message for status in ctx.unit_status_history]
    assert any(m.startswith("installing ") and "redis-server" in m for m in shown), shown
    assert any(
        m.startswith("building the runner image github-runner-debian-bookworm") for m in shown
    )
    assert out.unit_status == testing.ActiveStatus("0 runners: 0 idle, 0 busy")


def test_install_with_shared_redis_and_cloud_backend_needs_no_package_nor_image(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(
        ctx.on.install(), make_state({"backend": "fake", "redis-url": "redis://10.0.0.5:6379/0"})
    )
    assert fake_manager.packages == set()
    assert fake_manager.images == []
    assert fake_manager.schedule_hours == 0


def test_install_with_invalid_config_installs_nothing(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    out = ctx.run(ctx.on.install(), make_state({"token": ""}))
    assert fake_manager.packages == set() and not fake_manager.service_running
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("token: is required")


def test_image_schedule_follows_the_interval(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), make_state({"image-build-interval": 12}))
    assert fake_manager.schedule_hours == 12
    ctx.run(ctx.on.config_changed(), make_state({"image-build-interval": 0}))
    assert fake_manager.schedule_hours == 0


# -- config changes and the service ----------------------------------------------------------


def test_first_config_starts_the_service_later_changes_restart_it(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    assert fake_manager.service_running and fake_manager.service_restarts == 0
    ctx.run(ctx.on.update_status(), make_state())
    assert fake_manager.service_restarts == 0  # nothing changed: no restart
    ctx.run(ctx.on.config_changed(), make_state({"labels": "large"}))
    assert fake_manager.service_restarts == 1


@pytest.mark.parametrize(
    ("change", "flushes"),
    [
        ({"virtual-machines": 3}, False),
        ({"reconcile-interval": 5}, False),
        ({"labels": "large"}, True),
        ({"path": "acme-labs"}, True),
        ({"backend": "fake"}, True),
        ({"vm-cpu": 4}, True),
        ({"redis-url": "redis://10.0.0.9:6379/0"}, True),
    ],
)
def test_changes_that_make_runners_unusable_flush_the_idle_ones_first(
    ctx: testing.Context, fake_manager: FakeManager, change: dict, flushes: bool
) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    fake_manager.add_runner(status="idle")
    busy = fake_manager.add_runner(status="busy")
    ctx.run(ctx.on.config_changed(), make_state(change))
    if flushes:
        assert [f.flush_busy for f in fake_manager.flushes] == [False]
        assert list(fake_manager.runners) == [busy.name]  # busy runners are never flushed here
    else:
        assert fake_manager.flushes == []
        assert len(fake_manager.runners) == 2


def test_token_change_flushes_with_the_old_token_first(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), rotated("ghp_old_token_value")[0])
    fake_manager.add_runner(status="idle")
    state, secret = rotated("ghp_new_token_value")
    ctx.run(ctx.on.secret_changed(secret), state)
    assert [(f.token, f.removed) for f in fake_manager.flushes] == [
        (token_id("ghp_old_token_value"), 1)
    ]
    assert fake_manager.config is not None
    assert fake_manager.config["github"]["token"] == "ghp_new_token_value"
    assert fake_manager.service_restarts == 1


def test_token_github_rejects_blocks_and_changes_nothing(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), rotated("ghp_good_token")[0])
    runner = fake_manager.add_runner(status="idle")
    fake_manager.rejected_tokens.add("ghp_revoked_token")
    state, secret = rotated("ghp_revoked_token")
    out = ctx.run(ctx.on.secret_changed(secret), state)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("token: GitHub rejected the token (401")
    assert "ghp_revoked_token" not in out.unit_status.message
    assert list(fake_manager.runners) == [runner.name] and fake_manager.flushes == []
    assert fake_manager.config is not None
    assert fake_manager.config["github"]["token"] == "ghp_good_token"  # the old config stays


def test_backend_credentials_rejected_block(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    fake_manager.backend_rejected = "AuthFailure: the access key is not valid"
    out = ctx.run(ctx.on.config_changed(), make_state({"backend": "aws"}))
    assert out.unit_status == testing.BlockedStatus(
        "backend-config: the aws backend rejected the credentials "
        "(AuthFailure: the access key is not valid); fix the secret"
    )
    assert not fake_manager.service_running


def test_missing_image_blocks_and_build_image_still_runs(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    fake_manager.image_build_fails = "the mirror is unreachable"
    out = ctx.run(ctx.on.config_changed(), make_state({"backend": "lxd"}))
    assert out.unit_status == testing.BlockedStatus(
        "runner image github-runner-debian-bookworm is missing (the mirror is unreachable); "
        "fix the cause, then run the build-image action"
    )
    # actions are refused while it is missing, except dump-config and build-image (the remedy)
    with pytest.raises(testing.ActionFailed, match=r"runner image .* is missing"):
        ctx.run(ctx.on.action("reconcile-runners"), make_state({"backend": "lxd"}))
    ctx.run(ctx.on.action("dump-config"), make_state({"backend": "lxd"}))
    assert ctx.action_results is not None and "config" in ctx.action_results
    ctx.run(ctx.on.action("build-image"), make_state({"backend": "lxd"}))
    assert ctx.action_results is not None and "image" in ctx.action_results
    out = ctx.run(ctx.on.update_status(), make_state({"backend": "lxd"}))
    assert isinstance(out.unit_status, testing.ActiveStatus)  # an image exists now


def test_manager_errors_that_pass_show_maintenance(
    ctx: testing.Context, fake_manager: FakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_args: object, **_kwargs: object) -> None:
        raise ManagerError("Redis is unavailable: connection refused")

    monkeypatch.setattr(fake_manager, "apply", unavailable)
    out = ctx.run(ctx.on.update_status(), make_state())
    assert out.unit_status == testing.MaintenanceStatus(
        "Redis is unavailable: connection refused; retrying"
    )


def test_summary_errors_show_maintenance(
    ctx: testing.Context, fake_manager: FakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> str:
        raise ManagerError("Redis is unavailable: timeout")

    monkeypatch.setattr(fake_manager, "summary", unavailable)
    out = ctx.run(ctx.on.update_status(), make_state())
    assert out.unit_status == testing.MaintenanceStatus("Redis is unavailable: timeout; retrying")


def test_update_status_restarts_a_dead_service(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    fake_manager.service_running = False
    ctx.run(ctx.on.update_status(), make_state())
    assert fake_manager.service_running


# -- Redis across units ------------------------------------------------------------------------


@pytest.mark.parametrize("event", STATUS_EVENTS)
def test_several_units_without_shared_redis_block(
    ctx: testing.Context, fake_manager: FakeManager, event: str
) -> None:
    state = testing.State(
        config={"path": "acme", "token": TOKEN_SECRET.id}, secrets={TOKEN_SECRET}, planned_units=2
    )
    out = ctx.run(getattr(ctx.on, event)(), state)
    assert out.unit_status == testing.BlockedStatus(SHARED_REDIS_MESSAGE)
    assert fake_manager.applied == 0 and fake_manager.packages == set()


def test_several_units_with_shared_redis_are_active(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    state = testing.State(
        config={"path": "acme", "token": TOKEN_SECRET.id, "redis-url": "redis://10.0.0.5:6379/0"},
        secrets={TOKEN_SECRET},
        planned_units=3,
    )
    out = ctx.run(ctx.on.config_changed(), state)
    assert isinstance(out.unit_status, testing.ActiveStatus)
    assert "redis-server" not in fake_manager.packages


def test_several_units_with_related_redis_are_active(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    relation = testing.Relation("redis", remote_app_data={"hostname": "10.0.0.7", "port": "6379"})
    state = testing.State(
        config={"path": "acme", "token": TOKEN_SECRET.id},
        secrets={TOKEN_SECRET},
        relations={relation},
        planned_units=2,
    )
    out = ctx.run(ctx.on.relation_changed(relation), state)
    assert isinstance(out.unit_status, testing.ActiveStatus)


def test_actions_fail_when_units_have_no_shared_redis(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    state = testing.State(
        config={"path": "acme", "token": TOKEN_SECRET.id}, secrets={TOKEN_SECRET}, planned_units=2
    )
    with pytest.raises(testing.ActionFailed, match="several units need a shared Redis"):
        ctx.run(ctx.on.action("flush-runners"), state)


# -- upgrade, stop, remove ---------------------------------------------------------------------


def test_upgrade_flushes_idle_rebuilds_when_inputs_changed_and_restarts(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    fake_manager.add_runner(status="idle")
    busy = fake_manager.add_runner(status="busy")
    restarts = fake_manager.service_restarts
    ctx.run(ctx.on.upgrade_charm(), make_state())
    assert [f.flush_busy for f in fake_manager.flushes] == [False]
    assert list(fake_manager.runners) == [busy.name]
    assert fake_manager.images == ["github-runner-debian-bookworm"]  # inputs unchanged: no rebuild
    assert fake_manager.service_restarts == restarts + 1
    fake_manager.image_key = "built-by-an-older-charm"
    out = ctx.run(ctx.on.upgrade_charm(), make_state())
    assert len(fake_manager.images) == 2
    assert isinstance(out.unit_status, testing.ActiveStatus)


def test_upgrade_with_invalid_config_only_restarts(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    out = ctx.run(ctx.on.upgrade_charm(), make_state({"path": "a/b/c"}))
    assert fake_manager.upgrades == 1 and fake_manager.service_restarts == 1
    assert isinstance(out.unit_status, testing.BlockedStatus)


@pytest.mark.parametrize("event", ["stop", "remove"])
def test_stop_and_remove_flush_everything_and_clean_up(
    ctx: testing.Context, fake_manager: FakeManager, event: str
) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    fake_manager.add_runner(status="idle")
    fake_manager.add_runner(status="busy")
    out = ctx.run(getattr(ctx.on, event)(), make_state())
    assert fake_manager.runners == {} and fake_manager.removed
    assert fake_manager.flushes[-1].flush_busy is True
    assert not fake_manager.service_running and fake_manager.images == []
    assert fake_manager.schedule_hours == 0
    assert out.unit_status == testing.MaintenanceStatus(REMOVING_MESSAGE)


# -- ports and COS -----------------------------------------------------------------------------


def test_webhook_port_is_open_only_with_a_webhook_secret(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    from tests.unit.charm.helpers import WEBHOOK_SECRET_OBJ

    out = ctx.run(ctx.on.config_changed(), make_state({"webhook-secret": WEBHOOK_SECRET_OBJ.id}))
    assert out.opened_ports == {testing.TCPPort(8080)}
    out = ctx.run(ctx.on.config_changed(), make_state())
    assert out.opened_ports == set()


@pytest.mark.parametrize("event", ["joined", "changed"])
def test_cos_agent_gets_the_metrics_endpoint_rules_and_dashboard(
    ctx: testing.Context, fake_manager: FakeManager, event: str
) -> None:
    import cos

    relation = testing.Relation("cos-agent", remote_app_name="grafana-agent")
    state = make_state(relations=(relation,))
    out = ctx.run(getattr(ctx.on, f"relation_{event}")(relation), state)
    data = json.loads(out.get_relation(relation.id).local_unit_data["config"])
    assert set(data) == {
        "metrics_alert_rules",
        "log_alert_rules",
        "dashboards",
        "metrics_scrape_jobs",
        "log_slots",
    }
    assert data["metrics_scrape_jobs"][0]["static_configs"] == [{"targets": ["localhost:9464"]}]
    assert data["metrics_scrape_jobs"][0]["metrics_path"] == "/metrics"
    dashboard = json.loads(cos.decode_dashboard(data["dashboards"][0]))
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Runners by state",
        "Job pickup latency",
        "Rate-limit budget left",
        "Backend errors",
    } <= titles
    alerts = [
        rule["alert"] for group in data["metrics_alert_rules"]["groups"] for rule in group["rules"]
    ]
    assert "GithubRunnerManagerDown" in alerts and "GithubRunnerBackendErrors" in alerts
    log_alerts = [
        rule["alert"] for group in data["log_alert_rules"]["groups"] for rule in group["rules"]
    ]
    assert "GithubRunnerTokenRejected" in log_alerts
    for group in data["metrics_alert_rules"]["groups"] + data["log_alert_rules"]["groups"]:
        for rule in group["rules"]:
            assert "%%juju_topology%%" not in rule["expr"]
            assert 'juju_application="github-runner"' in rule["expr"]
            assert rule["labels"]["juju_application"] == "github-runner"
    assert TOKEN not in json.dumps(data)


def test_cos_data_is_written_on_config_changes_too(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    relation = testing.Relation("cos-agent", remote_app_name="grafana-agent")
    out = ctx.run(ctx.on.config_changed(), make_state(relations=(relation,)))
    assert "config" in out.get_relation(relation.id).local_unit_data
