"""The real manager's decisions and the unit's files, without I/O beyond tmp_path.

`plan_change` (what a config change means), the packages a config needs, the manager config the
unit writes, the systemd unit, apt through an injected command runner, private file writes, the
image inputs, the summary line.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import charm_service
from charm_manager import (
    RealManager,
    backends_used,
    image_inputs,
    needed_packages,
    plan_change,
    summary_line,
    token_id,
)
from charm_service import Layout, SystemdService, apt_install, write_private_file
from charm_state import CharmState
from tests.unit.charm.helpers import TOKEN


def state(**config: Any) -> CharmState:
    return CharmState.from_config(
        {"path": "acme", "token": TOKEN, "test-mode": True, **config},
        read_secret=lambda _id: {},
        arch="x86_64",
    )


class Recorder:
    """A command runner that records and answers from a table (`prefix tuple` → stdout)."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, args: Any, **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        self.calls.append(argv)
        for prefix, (code, out) in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix:
                return subprocess.CompletedProcess(argv, code, stdout=out, stderr="")
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")


# -- plan_change ------------------------------------------------------------------------------


def test_first_config_is_a_change_without_flush() -> None:
    change = plan_change(None, state().to_manager_config())
    assert change.first and change.changed and not change.flush_old


def test_same_config_is_no_change() -> None:
    config = state().to_manager_config()
    change = plan_change(config, state().to_manager_config())
    assert not change.changed and not change.flush_old


@pytest.mark.parametrize(
    ("config", "reasons"),
    [
        ({"virtual-machines": 4}, ()),
        ({"reconcile-interval": 3}, ()),
        ({"max-total-runners": 9}, ()),
        ({"denylist": "10.0.0.0/8"}, ()),
        ({"token": "ghp_another"}, ("token",)),
        ({"path": "acme-labs"}, ("path",)),
        ({"labels": "gpu"}, ("labels",)),
        ({"vm-memory": "16GiB"}, ("groups",)),
        ({"group": "other"}, ("groups",)),
        ({"backend": "fake"}, ("backend",)),
        ({"redis-url": "redis://10.1.1.1:6379/0"}, ("redis",)),
        ({"runner-groups": "[{name: big, labels: [big]}]"}, ("groups",)),
        ({"token": "ghp_x", "path": "beta", "labels": "y"}, ("path", "token", "labels")),
    ],
)
def test_what_makes_the_old_runners_unusable(
    config: dict[str, Any], reasons: tuple[str, ...]
) -> None:
    change = plan_change(state().to_manager_config(), state(**config).to_manager_config())
    assert change.changed
    assert change.reasons == reasons
    assert change.flush_old == bool(reasons)


# -- packages, images ---------------------------------------------------------------------------


def test_packages_follow_backend_and_redis() -> None:
    assert needed_packages(state(backend="fake", **{"redis-url": "redis://r:6379/0"})) == set()
    assert needed_packages(state(backend="fake")) == {"redis-server"}
    assert {"nftables", "mmdebstrap", "cron", "redis-server"} <= needed_packages(state())
    assert "docker.io" in needed_packages(state(backend="docker"))
    groups = "[{name: a, backends: [lxd, openstack]}, {name: b, backend: aws}]"
    assert backends_used(state(**{"runner-groups": groups})) == ["lxd", "openstack", "aws"]


def test_image_inputs_only_for_backends_the_charm_builds_for() -> None:
    assert image_inputs(state(backend="aws")) is None
    lxd = image_inputs(state())
    assert lxd is not None and lxd.lxd and not lxd.docker
    assert lxd.image == "github-runner-debian-bookworm"
    noble = image_inputs(state(**{"base-image": "ubuntu:noble"}))
    assert noble is not None and noble.key() != lxd.key()
    again = image_inputs(state())
    assert again is not None and again.key() == lxd.key()


def test_image_build_command_keeps_the_inputs_out_of_the_command_line(tmp_path: Path) -> None:
    command = charm_service.image_build_command(
        "/usr/bin/python3", tmp_path / "c.yaml", tmp_path / "s.json"
    )
    assert command == [
        "/usr/bin/python3",
        str(Path(charm_service.__file__).resolve()),
        "build-image",
        "--config",
        str(tmp_path / "c.yaml"),
        "--state-file",
        str(tmp_path / "s.json"),
    ]


def test_image_inputs_are_kept_private_for_the_cron_entry(tmp_path: Path) -> None:
    manager = RealManager(layout=Layout.under(tmp_path), unit_name="u", use_systemd=False)
    mirror = "https://user:mirror-pass@mirror.example.com"
    manager.remember_image_inputs(state(**{"dockerhub-mirror": mirror}))
    saved = manager.layout.charm_state_file
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["image_inputs"]["dockerhub_mirror"] == mirror


def test_summary_line() -> None:
    assert summary_line({}) == "0 runners: 0 idle, 0 busy"
    assert summary_line({"idle": 1}) == "1 runner: 1 idle, 0 busy"
    assert summary_line({"idle": 1, "busy": 2, "creating": 1, "offline": 0}) == (
        "4 runners: 1 idle, 2 busy, 1 creating"
    )


def test_token_id_tells_tokens_apart_without_showing_them() -> None:
    assert token_id("a") != token_id("b") and token_id("a") == token_id("a")
    assert "ghp" not in token_id("ghp_secret")


# -- the unit's files ---------------------------------------------------------------------------


def test_manager_config_has_the_units_settings(tmp_path: Path) -> None:
    manager = RealManager(
        layout=Layout.under(tmp_path), unit_name="github-runner-3", use_systemd=False
    )
    from tests.unit.charm.helpers import WEBHOOK_SECRET

    mapping = manager.manager_config(
        state(
            backend="fake", **{"webhook-secret": WEBHOOK_SECRET, "backend-config": "{mode: local}"}
        )
    )
    assert mapping["unit"] == "github-runner-3"
    assert mapping["state_dir"] == str(tmp_path / "state" / "manager")
    assert mapping["metrics_listen"] == "127.0.0.1:9464"
    assert mapping["webhook"] == {"secret": WEBHOOK_SECRET, "listen": "0.0.0.0:8080"}
    assert mapping["redis"] == {"url": "redis://127.0.0.1:6379/0"}  # embedded
    fake = mapping["backends"]["fake"]
    assert fake["mode"] == "local"
    assert fake["state_file"] == str(tmp_path / "state" / "manager" / "fake-instances.json")
    from github_runner_manager.config import parse_config

    parse_config(mapping)  # the manager accepts it


def test_overrides_are_deep_merged(tmp_path: Path) -> None:
    manager = RealManager(
        layout=Layout.under(tmp_path),
        unit_name="u",
        use_systemd=False,
        overrides={"github": {"url": "http://127.0.0.1:1"}, "reconcile_interval": "5s"},
    )
    mapping = manager.manager_config(state())
    assert mapping["github"]["url"] == "http://127.0.0.1:1"
    assert mapping["github"]["paths"] == ["acme"] and mapping["github"]["token"] == TOKEN
    assert mapping["reconcile_interval"] == "5s"


def test_unit_name_defaults_to_the_juju_unit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JUJU_UNIT_NAME", "github-runner/7")
    assert (
        RealManager(layout=Layout.under(tmp_path), use_systemd=False).unit_name == "github-runner-7"
    )


def test_private_files_are_0600_from_the_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "manager.yaml"
    assert write_private_file(path, "token: x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not write_private_file(path, "token: x\n")  # unchanged: not rewritten
    assert write_private_file(path, "token: y\n")
    assert path.read_text() == "token: y\n"
    assert [p.name for p in path.parent.iterdir()] == ["manager.yaml"]  # no temporary left


def test_systemd_unit_and_its_commands(tmp_path: Path) -> None:
    layout = Layout.under(tmp_path)
    run = Recorder({("systemctl", "is-active"): (0, "active\n")})
    service = SystemdService("github-runner-manager", layout, run, description="manager")
    command = [
        "/usr/bin/python3",
        "-m",
        "github_runner_manager.cli",
        "--config",
        "/x y/m.yaml",
        "run",
    ]
    assert service.install(command, {"PYTHONPATH": "/charm/venv:/charm/src"})
    text = service.unit_file.read_text()
    assert (
        "ExecStart=/usr/bin/python3 -m github_runner_manager.cli --config '/x y/m.yaml' run" in text
    )
    assert f"EnvironmentFile={service.env_file}" in text
    assert service.env_file.read_text() == "PYTHONPATH=/charm/venv:/charm/src\n"
    assert stat.S_IMODE(service.env_file.stat().st_mode) == 0o600
    assert "Restart=always" in text and "KillMode=process" in text
    assert f"StandardOutput=append:{layout.log_dir}/github-runner-manager.log" in text
    assert run.calls == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "github-runner-manager.service"],
    ]
    assert not service.install(command, {"PYTHONPATH": "/charm/venv:/charm/src"})  # unchanged
    assert service.running()
    service.restart()
    service.remove()
    assert ["systemctl", "restart", "github-runner-manager.service"] in run.calls
    assert ["systemctl", "disable", "--now", "github-runner-manager.service"] in run.calls
    assert not service.unit_file.exists() and not service.env_file.exists()


def test_apt_installs_only_what_is_missing() -> None:
    run = Recorder({("dpkg-query", "-W", "-f=${Status}", "cron"): (0, "install ok installed")})
    installed = apt_install(["redis-server", "cron", "redis-server"], run)
    assert installed == ["redis-server"]
    assert ["apt-get", "update", "-q"] in run.calls
    assert [
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "redis-server",
    ] in run.calls
    run = Recorder({("dpkg-query",): (0, "install ok installed")})
    assert apt_install(["cron"], run) == []
    assert not any(call[0] == "apt-get" for call in run.calls)


def test_run_command_reports_failures_in_one_line() -> None:
    with pytest.raises(charm_service.CommandError, match="exit code 3: boom"):
        charm_service.run_command(["sh", "-c", "echo boom >&2; exit 3"], timeout=10)
    with pytest.raises(charm_service.CommandError, match="timed out"):
        charm_service.run_command(["sleep", "5"], timeout=0.2)
    assert charm_service.run_command(["sh", "-c", "exit 4"], check=False).returncode == 4


def test_remove_without_any_config_is_harmless(tmp_path: Path) -> None:
    layout = Layout.under(tmp_path)
    manager = RealManager(layout=layout, unit_name="u", use_systemd=True, run=Recorder())
    assert manager.remove() == 0
    assert manager.remove() == 0
    assert not layout.config_file.exists()


def test_dump_config_needs_an_applied_config(tmp_path: Path) -> None:
    from charm_manager import ManagerError

    manager = RealManager(layout=Layout.under(tmp_path), unit_name="u", use_systemd=False)
    with pytest.raises(ManagerError, match="no valid configuration"):
        manager.dump_config()
    layout = Layout.under(tmp_path)
    write_private_file(layout.config_file, yaml.safe_dump(manager.manager_config(state())))
    dumped = yaml.safe_load(manager.dump_config())
    assert dumped["github"]["token"] == "**********" and dumped["unit"] == "u"


def test_the_rebuild_schedule_follows_the_interval(tmp_path: Path) -> None:
    layout = Layout.under(tmp_path)
    manager = RealManager(layout=layout, unit_name="u", use_systemd=False)
    manager._ensure_schedule(state(**{"image-build-interval": 6}))
    text = layout.cron_path.read_text()
    assert "charm_service.py build-image" in text and str(layout.charm_state_file) in text
    assert TOKEN not in text
    manager._ensure_schedule(state(**{"image-build-interval": 0}))
    assert not layout.cron_path.exists()
    manager._ensure_schedule(state(backend="aws", **{"image-build-interval": 6}))
    assert not layout.cron_path.exists()  # no image the charm builds: nothing to schedule


def test_build_image_entry_needs_recorded_inputs(tmp_path: Path) -> None:
    config = tmp_path / "manager.yaml"
    config.write_text(
        yaml.safe_dump(
            RealManager(
                layout=Layout.under(tmp_path), unit_name="u", use_systemd=False
            ).manager_config(state())
        )
    )
    code = charm_service.main(
        ["build-image", "--config", str(config), "--state-file", str(tmp_path / "none.json")]
    )
    assert code == 1


def test_the_models_proxy_reaches_the_service() -> None:
    env = charm_service.proxy_environment(
        {"JUJU_CHARM_HTTPS_PROXY": "http://proxy:3128", "JUJU_CHARM_NO_PROXY": "10.0.0.0/8"}
    )
    assert env == {
        "https_proxy": "http://proxy:3128",
        "HTTPS_PROXY": "http://proxy:3128",
        "no_proxy": "10.0.0.0/8",
        "NO_PROXY": "10.0.0.0/8",
    }
