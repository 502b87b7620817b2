"""Charm in the loop: Scenario drives the charm's handlers against the REAL manager.

`RealManager` writes the config file, downloads the runner application from the emulator, runs
`github-runner-manager run` as a supervised process (no systemd here), and serves the actions with
the library. Real parts: redis-server (`redis_url`), the GitHub emulator (`emulator`), the fake
backend in `local` mode (each runner is a real process running the emulator's runner app).
Commands the charm would run as root on a unit (apt-get, systemctl, lxd) go to a recorder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops import testing
from tests.parts import free_port, wait_for

from charm import GithubRunnerCharm
from charm_manager import RealManager
from charm_service import Layout, SupervisedProcess

TOKEN = "ghp_charm_in_the_loop_0123456789"
OTHER_TOKEN = "ghp_charm_other_org_9876543210"
REJECTED = "ghp_the_emulator_never_heard_of"
UNIT = "github-runner-0"
DEADLINE = 90.0

pytestmark = [pytest.mark.needs_redis, pytest.mark.slow]


@dataclass
class Recorder:
    """Stands in for the commands the charm runs as root (apt-get, systemctl, lxd)."""

    calls: list[list[str]] = field(default_factory=list)

    def __call__(self, args: Any, **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append([str(a) for a in args])
        return subprocess.CompletedProcess(list(args), 0, stdout="", stderr="")


@dataclass
class World:
    emulator: Any
    redis_url: str
    layout: Layout
    manager: RealManager
    recorder: Recorder
    ctx: testing.Context[GithubRunnerCharm]

    def state(self, **config: Any) -> testing.State:
        base = {
            "path": "acme",
            "token": TOKEN,
            "test-mode": True,
            "backend": "fake",
            "backend-config": "{mode: local}",
            "redis-url": self.redis_url,
            "virtual-machines": 2,
            "reconcile-interval": 1,
            "image-build-interval": 0,
        }
        return testing.State(config={**base, **config})

    def runners(self, org: str | None = None) -> list[dict[str, Any]]:
        """The emulator's runners with the fleet's prefix (of `org` when given)."""
        found = [r for r in self.emulator.control.runners() if r["name"].startswith("ghr-")]
        if org is not None:
            found = [r for r in found if org in json.dumps(r)]
        return found

    def names(self) -> set[str]:
        return {r["name"] for r in self.runners()}

    def online(self, count: int) -> list[dict[str, Any]]:
        """Wait until exactly `count` of our runners are online on the emulator."""

        def ready() -> list[dict[str, Any]] | None:
            online = [r for r in self.runners() if r["status"] == "online"]
            return online if len(online) == count else None

        found = wait_for(ready, DEADLINE, interval=0.2, what=f"{count} runners online")
        assert isinstance(found, list)
        return found

    def service(self) -> SupervisedProcess:
        service = self.manager.service
        assert isinstance(service, SupervisedProcess)
        return service

    def log(self) -> str:
        try:
            return self.layout.log_file("github-runner-manager").read_text()[-4000:]
        except OSError:
            return ""


@pytest.fixture
def world(
    emulator: Any, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    control = emulator.control
    for org in ("acme", "beta"):
        control.add_org(org)
    control.add_repo("acme", "app")
    control.add_repo("beta", "api")
    control.add_token(TOKEN, orgs=["acme"], repos=["acme/app"])
    control.add_token(OTHER_TOKEN, orgs=["beta"], repos=["beta/api"])
    layout = Layout.under(tmp_path)
    recorder = Recorder()
    manager = RealManager(
        layout=layout,
        unit_name=UNIT,
        run=recorder,
        use_systemd=False,
        overrides={
            "github": {"url": emulator.url, "poll_interval": "5s"},
            "metrics_listen": f"127.0.0.1:{free_port()}",
            "register_timeout": "60s",
            "offline_timeout": "60s",
        },
        embedded_redis_port=free_port(),
    )
    monkeypatch.setattr(GithubRunnerCharm, "manager_factory", lambda: manager)
    # the service and the runner processes import the checkout's packages
    src = str(Path(__file__).resolve().parents[3] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    world = World(
        emulator, redis_url, layout, manager, recorder, testing.Context(GithubRunnerCharm)
    )
    try:
        yield world
    finally:
        try:
            manager.remove()
        finally:
            _kill_leftovers(layout)


def _kill_leftovers(layout: Layout) -> None:
    """Whatever the test left running (supervisors, runner processes) goes."""
    for pidfile in layout.base_dir.glob("*.pid"):
        try:
            pid = int(pidfile.read_text().partition(":")[0])
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    state_file = layout.state_dir / "fake-instances.json"
    try:
        instances = json.loads(state_file.read_text() or "{}")
    except (OSError, ValueError):
        instances = {}
    for record in instances.values():
        pid = record.get("pid")
        if pid:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                pass


def busy_job(world: World, seconds: int = 60) -> int:
    """Queue a job that keeps a runner busy for `seconds`; return its id once a runner runs it."""
    job_id = world.emulator.control.queue_job(
        "acme/app", ["self-hosted", "linux"], [f"sleep {seconds}"]
    )
    wait_for(
        lambda: any(r["busy"] for r in world.runners()),
        DEADLINE,
        interval=0.2,
        what="a busy runner",
    )
    return job_id


# ---------------------------------------------------------------------------------------------


def test_config_changed_brings_runners_up_on_the_emulator(world: World) -> None:
    out = world.ctx.run(world.ctx.on.config_changed(), world.state())
    assert out.unit_status.name in ("active", "maintenance"), out.unit_status
    config = world.layout.config_file
    assert config.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(config.read_text())["github"]["token"] == TOKEN
    assert world.service().running(), world.log()
    online = world.online(2)
    assert {r["name"].rsplit("-", 1)[0] for r in online} == {"ghr-default"}
    assert not any(["apt-get", "install"] == c[:2] for c in world.recorder.calls)  # nothing needed
    out = world.ctx.run(world.ctx.on.update_status(), world.state())
    assert out.unit_status == testing.ActiveStatus("2 runners: 2 idle, 0 busy")
    # the token is in the 0600 config file only: not in the service's command line or spec
    assert TOKEN not in world.service().spec_file.read_text()


def test_check_runners_reports_the_emulators_truth(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    world.online(2)
    busy_job(world)
    world.ctx.run(world.ctx.on.action("check-runners"), world.state())
    results = world.ctx.action_results
    assert results is not None
    truth = world.runners()
    assert int(results["online"]) == sum(1 for r in truth if r["status"] == "online")
    assert int(results["busy"]) == sum(1 for r in truth if r["busy"]) == 1
    assert int(results["offline"]) == sum(1 for r in truth if r["status"] != "online")
    assert set(results["runners"].split(", ")) == {r["name"] for r in truth}


def test_flush_busy_removes_every_runner(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    world.online(2)
    busy_job(world)
    before = world.names()
    world.ctx.run(world.ctx.on.action("flush-runners", params={"flush-busy": True}), world.state())
    assert world.ctx.action_results == {"flushed": 2}
    assert world.names() & before == set(), "flushed runners are still registered"


def test_flush_idle_keeps_the_busy_runner(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    world.online(2)
    busy_job(world)
    busy = {r["name"] for r in world.runners() if r["busy"]}
    world.ctx.run(world.ctx.on.action("flush-runners"), world.state())
    assert world.ctx.action_results == {"flushed": 1}
    assert busy <= world.names()


def test_rejected_token_blocks_and_deletes_nothing(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    before = {r["name"] for r in world.online(2)}
    supervisor = world.service().pid()
    out = world.ctx.run(world.ctx.on.config_changed(), world.state(token=REJECTED))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("token: GitHub rejected the token (HTTP 401)")
    assert REJECTED not in out.unit_status.message
    assert world.names() == before
    assert all(r["status"] == "online" for r in world.runners())
    assert yaml.safe_load(world.layout.config_file.read_text())["github"]["token"] == TOKEN
    assert world.service().pid() == supervisor  # the service was not restarted
    with pytest.raises(testing.ActionFailed, match="GitHub rejected the token"):
        world.ctx.run(world.ctx.on.action("flush-runners"), world.state(token=REJECTED))
    assert world.names() == before


def test_token_and_path_change_flushes_with_the_old_token(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    old = {r["name"] for r in world.online(2)}
    out = world.ctx.run(world.ctx.on.config_changed(), world.state(path="beta", token=OTHER_TOKEN))
    assert out.unit_status.name in ("active", "maintenance"), out.unit_status
    # the new token cannot see acme: only the old one could remove its runners there
    assert world.names() & old == set()
    new = world.online(2)
    assert all("beta" in json.dumps(r) for r in new)


def test_reconcile_and_dump_config_actions(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    world.online(2)
    world.ctx.run(world.ctx.on.action("reconcile-runners"), world.state())
    assert world.ctx.action_results == {"delta": 0}
    world.ctx.run(world.ctx.on.action("dump-config"), world.state())
    assert world.ctx.action_results is not None
    dumped = world.ctx.action_results["config"]
    assert TOKEN not in dumped and yaml.safe_load(dumped)["github"]["token"] == "**********"
    world.ctx.run(world.ctx.on.action("update-runner-bin"), world.state())
    results = world.ctx.action_results
    assert results is not None and results["updated"] == "false"  # apply downloaded it already
    assert len(results["sha256"]) == 64


def test_the_supervisor_restarts_a_dead_manager_and_update_status_a_dead_supervisor(
    world: World,
) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    world.online(2)
    supervisor = world.service().pid()
    assert supervisor is not None
    os.killpg(supervisor, signal.SIGKILL)  # the supervisor and the manager it runs
    wait_for(lambda: not world.service().running(), 10, what="the supervisor gone")
    world.ctx.run(world.ctx.on.update_status(), world.state())
    assert world.service().running()
    assert world.service().pid() != supervisor
    world.ctx.run(world.ctx.on.action("reconcile-runners"), world.state())
    assert len(world.online(2)) == 2


def test_stop_removes_runners_service_and_config(world: World) -> None:
    world.ctx.run(world.ctx.on.config_changed(), world.state())
    world.online(2)
    busy_job(world)
    out = world.ctx.run(world.ctx.on.stop(), world.state())
    assert out.unit_status.name == "maintenance"
    assert world.names() == set()
    assert not world.service().running()
    assert not world.layout.config_file.exists()


def test_embedded_redis_is_started_and_stopped_by_the_charm(world: World) -> None:
    import redis

    out = world.ctx.run(world.ctx.on.config_changed(), world.state(**{"redis-url": ""}))
    assert out.unit_status.name in ("active", "maintenance"), out.unit_status
    url = yaml.safe_load(world.layout.config_file.read_text())["redis"]["url"]
    assert url == f"redis://127.0.0.1:{world.manager.embedded_redis_port}/0"
    assert redis.Redis.from_url(url, socket_timeout=2).ping()
    world.online(2)
    world.manager.remove()
    wait_for(
        lambda: not SupervisedProcess("github-runner-redis", world.layout).running(),
        10,
        what="the embedded redis-server stopped",
    )
    assert sys.executable  # (keeps the interpreter import used on every platform)


def test_creates_that_keep_failing_show_in_the_unit_status(world: World) -> None:
    """Every create fails (the backend is down): the service backs off, and the unit's status says
    which group cannot get runners and why, while staying active (nothing to fix in the charm)."""
    state = world.state(**{"backend-config": "{mode: local, fail_rate: 1.0}"})
    world.ctx.run(world.ctx.on.config_changed(), state)
    assert world.service().running(), world.log()

    def status() -> str | None:
        out = world.ctx.run(world.ctx.on.update_status(), state)
        message = out.unit_status.message
        return (
            message if out.unit_status.name == "active" and "creates failing" in message else None
        )

    message = wait_for(status, DEADLINE, interval=0.5, what="the backoff in the unit status")
    assert message is not None and message.startswith("0 runners: 0 idle, 0 busy; "), message
    assert (
        "creates failing for default (retrying): BackendError: injected create failure" in message
    )
    assert TOKEN not in message
    assert world.runners() == []  # every failed create was undone
