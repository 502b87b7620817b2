"""Every action in actions.yaml: exists, does the work on the manager, returns the declared keys."""

from __future__ import annotations

import re

import pytest
import yaml
from ops import testing

from charm_manager import FakeManager, ManagerError
from tests.unit.charm.helpers import (
    ACTIONS,
    AWS_SECRET_KEY,
    BACKEND_SECRET,
    REDIS_PASSWORD,
    SECRET_VALUES,
    TOKEN,
    WEBHOOK_SECRET,
    WEBHOOK_SECRET_OBJ,
    make_state,
)

_RESULTS_LINE = re.compile(r"^Results: ([a-z0-9-]+(?:, [a-z0-9-]+)*)\.$", re.MULTILINE)


def declared_results(action: str) -> set[str]:
    """The result keys an action's description declares ("Results: a, b.")."""
    match = _RESULTS_LINE.search(ACTIONS[action]["description"])
    assert match, f"{action}: description has no 'Results: ...' line"
    return set(match.group(1).split(", "))


def test_actions_are_the_ones_the_issue_asks_for() -> None:
    assert {name: declared_results(name) for name in ACTIONS} == {
        "check-runners": {"online", "busy", "offline", "unknown", "runners"},
        "reconcile-runners": {"delta"},
        "flush-runners": {"flushed"},
        "update-runner-bin": {"version", "url", "sha256", "updated"},
        "build-image": {"image", "seconds"},
        "dump-config": {"config"},
    }
    assert ACTIONS["flush-runners"]["params"]["flush-busy"] == {
        "type": "boolean",
        "default": False,
        "description": "Also remove runners that are running a job.",
    }


@pytest.mark.parametrize("action", list(ACTIONS))
def test_action_returns_exactly_the_declared_keys(
    ctx: testing.Context, fake_manager: FakeManager, action: str
) -> None:
    ctx.run(ctx.on.action(action), make_state())
    assert ctx.action_results is not None
    assert set(ctx.action_results) == declared_results(action)


def test_reconcile_runners_creates_and_reports_the_delta(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    state = make_state({"virtual-machines": 3})
    out = ctx.run(ctx.on.action("reconcile-runners"), state)
    assert ctx.action_results == {"delta": 3}
    assert len(fake_manager.runners) == 3
    assert out.unit_status == testing.ActiveStatus("3 runners: 3 idle, 0 busy")

    ctx.run(ctx.on.action("reconcile-runners"), state)
    assert ctx.action_results == {"delta": 0}

    # A runner takes a job: it still counts towards the three, nothing is added or removed.
    next(iter(fake_manager.runners.values())).status = "busy"
    ctx.run(ctx.on.action("reconcile-runners"), state)
    assert ctx.action_results == {"delta": 0}

    # Scale down to one: the idle ones go, the busy one stays.
    out = ctx.run(ctx.on.action("reconcile-runners"), make_state({"virtual-machines": 1}))
    assert ctx.action_results == {"delta": -2}
    assert [r.status for r in fake_manager.runners.values()] == ["busy"]
    assert out.unit_status == testing.ActiveStatus("1 runner: 0 idle, 1 busy")


def test_reconcile_tops_up_idle_runners_of_a_group(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    state = make_state({"runner-groups": "[{name: small, min-idle: 2, max-runners: 4}]"})
    ctx.run(ctx.on.action("reconcile-runners"), state)
    assert ctx.action_results == {"delta": 2}
    for runner in fake_manager.runners.values():
        runner.status = "busy"
    ctx.run(ctx.on.action("reconcile-runners"), state)
    assert ctx.action_results == {"delta": 2}
    ctx.run(ctx.on.action("reconcile-runners"), state)
    assert ctx.action_results == {"delta": 0}
    assert len(fake_manager.runners) == 4


def test_reconcile_respects_max_total_runners(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    groups = "[{name: a, min-idle: 4}, {name: b, min-idle: 4}]"
    ctx.run(
        ctx.on.action("reconcile-runners"),
        make_state({"runner-groups": groups, "max-total-runners": 5}),
    )
    assert ctx.action_results == {"delta": 5}
    assert len(fake_manager.runners) == 5


def test_reconcile_removes_offline_runners(ctx: testing.Context, fake_manager: FakeManager) -> None:
    fake_manager.add_runner(status="offline")
    ctx.run(ctx.on.action("reconcile-runners"), make_state())
    assert ctx.action_results == {"delta": 0}  # one offline removed, one idle created
    assert [r.status for r in fake_manager.runners.values()] == ["idle"]


@pytest.mark.parametrize(("flush_busy", "flushed", "left"), [(False, 2, ["busy"]), (True, 3, [])])
def test_flush_runners_honours_flush_busy(
    ctx: testing.Context,
    fake_manager: FakeManager,
    flush_busy: bool,
    flushed: int,
    left: list[str],
) -> None:
    fake_manager.add_runner(status="idle")
    fake_manager.add_runner(status="busy")
    fake_manager.add_runner(status="offline")
    ctx.run(ctx.on.action("flush-runners", params={"flush-busy": flush_busy}), make_state())
    assert ctx.action_results == {"flushed": flushed}
    assert [r.status for r in fake_manager.runners.values()] == left


def test_flush_busy_defaults_to_false(ctx: testing.Context, fake_manager: FakeManager) -> None:
    fake_manager.add_runner(status="busy")
    ctx.run(ctx.on.action("flush-runners"), make_state())
    assert ctx.action_results == {"flushed": 0}
    assert len(fake_manager.runners) == 1


def test_check_runners_counts(ctx: testing.Context, fake_manager: FakeManager) -> None:
    names = [fake_manager.add_runner(status=s).name for s in ("idle", "busy", "busy", "offline")]
    fake_manager.add_runner(status="unknown")
    ctx.run(ctx.on.action("check-runners"), make_state())
    results = ctx.action_results
    assert results is not None
    assert (results["online"], results["busy"], results["offline"], results["unknown"]) == (
        3,
        2,
        1,
        1,
    )
    assert all(name in results["runners"] for name in names)


def test_update_runner_bin_reports_whether_it_changed(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    ctx.run(ctx.on.action("update-runner-bin"), make_state())
    first = dict(ctx.action_results or {})
    assert first and first["updated"] == "true"
    assert re.fullmatch(r"[0-9a-f]{64}", first["sha256"])
    ctx.run(ctx.on.action("update-runner-bin"), make_state())
    second = dict(ctx.action_results or {})
    assert second == {**first, "updated": "false"}


def test_build_image_names_the_image(ctx: testing.Context, fake_manager: FakeManager) -> None:
    ctx.run(ctx.on.action("build-image"), make_state({"base-image": "ubuntu:noble"}))
    results = ctx.action_results
    assert results is not None
    assert results["image"].startswith("github-runner-ubuntu-noble")
    # the first apply built the configured image; the action built a new one after it
    assert fake_manager.images == ["github-runner-ubuntu-noble", results["image"]]
    assert results["seconds"] >= 0


def test_dump_config_contains_no_secret(ctx: testing.Context, fake_manager: FakeManager) -> None:
    config = {
        "webhook-secret": WEBHOOK_SECRET_OBJ.id,
        "backend": "aws",
        "backend-config": BACKEND_SECRET.id,
        "redis-url": f"redis://default:{REDIS_PASSWORD}@10.0.0.5:6379/0",
        "dockerhub-mirror": "https://mirror-user:mirror-pass-123@mirror.example.com",
    }
    ctx.run(ctx.on.action("dump-config"), make_state(config))
    results = ctx.action_results
    assert results is not None
    text = results["config"]
    for secret in (*SECRET_VALUES, "mirror-pass-123"):
        assert secret not in text
    dumped = yaml.safe_load(text)
    assert dumped["github"]["token"] == "**********"
    assert dumped["webhook"]["secret"] == "**********"
    assert dumped["backends"]["aws"] == {
        "region": "**********",
        "access_key_id": "**********",
        "secret_access_key": "**********",
    }
    assert dumped["redis"]["url"] == "redis://default:**********@10.0.0.5:6379/0"
    assert dumped["github"]["paths"] == ["acme"]
    # The secrets did reach the manager; only the dump hides them.
    assert fake_manager.state is not None
    manager_config = fake_manager.state.to_manager_config()
    assert manager_config["github"]["token"] == TOKEN
    assert manager_config["webhook"]["secret"] == WEBHOOK_SECRET
    assert manager_config["backends"]["aws"]["secret_access_key"] == AWS_SECRET_KEY


@pytest.mark.parametrize("action", list(ACTIONS))
def test_actions_fail_on_invalid_config_and_touch_nothing(
    ctx: testing.Context, fake_manager: FakeManager, action: str
) -> None:
    fake_manager.add_runner(status="idle")
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action(action), make_state({"path": "a/b/c"}))
    assert failure.value.message.startswith("the configuration is invalid, fix it first: path: ")
    assert len(fake_manager.runners) == 1
    assert fake_manager.state is None


def test_actions_fail_while_redis_relation_is_pending(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    relation = testing.Relation("redis")
    with pytest.raises(testing.ActionFailed, match="waiting for the redis relation"):
        ctx.run(ctx.on.action("reconcile-runners"), make_state(relations=(relation,)))
    assert fake_manager.runners == {}


def test_manager_errors_fail_the_action(
    ctx: testing.Context, fake_manager: FakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> dict[str, str]:
        raise ManagerError("the image build failed: no network; check the unit's proxy settings")

    monkeypatch.setattr(fake_manager, "build_image", refuse)
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("build-image"), make_state())
    assert failure.value.message == (
        "the image build failed: no network; check the unit's proxy settings"
    )


def test_fake_manager_refuses_work_without_config() -> None:
    fake = FakeManager()
    for work in (fake.reconcile, fake.build_image, fake.dump_config):
        with pytest.raises(ManagerError):
            work()
    assert fake.flush(flush_busy=True) == 0
    assert fake.summary() == "0 runners: 0 idle, 0 busy"
