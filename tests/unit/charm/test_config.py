"""Config validation as the operator sees it: blocked with a message naming the option, or active."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from ops import testing

from charm_manager import FakeManager
from charm_state import DEFAULTS, OPTIONS, CharmConfigInvalidError, CharmState
from tests.unit.charm.helpers import (
    AWS_SECRET_KEY,
    BACKEND_SECRET,
    CONFIG_OPTIONS,
    TOKEN,
    TOKEN_SECRET,
    WEBHOOK_SECRET,
    WEBHOOK_SECRET_OBJ,
    make_state,
    read_secret_from,
)

#: For every option: a config with one invalid value of it (other options valid).
INVALID: list[tuple[str, dict[str, Any]]] = [
    ("path", {"path": "a/b/c"}),
    ("path", {"path": ""}),
    ("token", {"token": "ghp_plainTextToken"}),
    ("token", {"token": ""}),
    ("token", {"token": "secret:" + "x" * 20}),
    ("token", {"token": "secret:nope"}),
    ("token", {"token": BACKEND_SECRET.id}),
    ("webhook-secret", {"webhook-secret": "plain-hmac-key"}),
    ("webhook-secret", {"webhook-secret": TOKEN_SECRET.id}),
    ("virtual-machines", {"virtual-machines": -1}),
    ("vm-cpu", {"vm-cpu": 0}),
    ("vm-memory", {"vm-memory": "7 gigs"}),
    ("vm-memory", {"vm-memory": "100MiB"}),
    ("vm-disk", {"vm-disk": "big"}),
    ("labels", {"labels": "large, has space"}),
    ("group", {"group": "   "}),
    ("reconcile-interval", {"reconcile-interval": 0}),
    ("backend", {"backend": "kubernetes"}),
    ("backend-config", {"backend-config": "region: x"}),
    ("backend-config", {"backend-config": "secret:" + "y" * 20}),
    ("runner-groups", {"runner-groups": "[{name: big, max-runners: 2, min-idle: 3}]"}),
    ("runner-groups", {"runner-groups": "[{name: big, cpu: lots}]"}),
    ("runner-groups", {"runner-groups": "{name: big}"}),
    ("runner-groups", {"runner-groups": "[{name: a}, {name: a}]"}),
    ("runner-groups", {"runner-groups": "[{name: a, colour: red}]"}),
    ("runner-groups", {"runner-groups": "[{name: a, backend: cloud9}]"}),
    ("runner-groups", {"runner-groups": "- name: [unclosed"}),
    ("max-total-runners", {"max-total-runners": -1}),
    ("per-owner-max-runners", {"per-owner-max-runners": -3}),
    ("denylist", {"denylist": "10.0.0.0/8, 10.0.0.0/33"}),
    ("dockerhub-mirror", {"dockerhub-mirror": "ftp://mirror.example.com"}),
    ("runner-storage", {"runner-storage": "nfs"}),
    ("base-image", {"base-image": "centos:7"}),
    ("image-build-interval", {"image-build-interval": -1}),
    ("redis-url", {"redis-url": "http://10.0.0.5:6379"}),
    ("redis-url", {"redis-url": "redis://"}),
]


def _id(case: tuple[str, dict[str, Any]]) -> str:
    option, config = case
    return f"{option}={config[option]!r}"


def test_every_option_has_an_invalid_case() -> None:
    """The table above covers config.yaml (test-mode, a boolean, has its own test)."""
    covered = {option for option, _ in INVALID} | {"test-mode"}
    assert covered == set(CONFIG_OPTIONS)


def test_defaults_mirror_config_yaml() -> None:
    assert {name: spec["default"] for name, spec in CONFIG_OPTIONS.items()} == dict(DEFAULTS)
    assert list(CONFIG_OPTIONS) == list(OPTIONS)


@pytest.mark.parametrize("case", INVALID, ids=[_id(c) for c in INVALID])
def test_invalid_value_blocks_naming_the_option(
    ctx: testing.Context, fake_manager: FakeManager, case: tuple[str, dict[str, Any]]
) -> None:
    option, config = case
    out = ctx.run(ctx.on.config_changed(), make_state(config))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(f"{option}: ")
    assert fake_manager.state is None, "an invalid config must not reach the manager"
    for secret in (TOKEN, WEBHOOK_SECRET, "ghp_plainTextToken", "plain-hmac-key"):
        assert secret not in out.unit_status.message


def test_test_mode_must_be_a_boolean(ctx: testing.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """Juju only sends booleans; should anything else get through, the charm names the option."""
    monkeypatch.setenv("SCENARIO_SKIP_CONSISTENCY_CHECKS", "1")
    out = ctx.run(ctx.on.config_changed(), make_state({"test-mode": "yes"}))
    assert out.unit_status == testing.BlockedStatus('test-mode: "yes" is not true or false')


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"path": "a/b/c"}, 'path: "a/b/c" is neither an org, owner/repo nor enterprise:NAME'),
        ({"vm-memory": "7 gigs"}, 'vm-memory: "7 gigs" is not a size like 7GiB'),
        ({"denylist": "10.0.0.0/33"}, 'denylist: "10.0.0.0/33" is not a CIDR like 10.0.0.0/8'),
        (
            {"runner-groups": "[{name: big, max-runners: 2, min-idle: 3}]"},
            'runner-groups: group "big": max-runners (2) < min-idle (3)',
        ),
    ],
)
def test_messages_say_what_is_accepted(
    ctx: testing.Context, config: dict[str, Any], message: str
) -> None:
    out = ctx.run(ctx.on.config_changed(), make_state(config))
    assert out.unit_status == testing.BlockedStatus(message)


def test_plain_token_outside_test_mode_points_to_juju_secrets(ctx: testing.Context) -> None:
    out = ctx.run(ctx.on.config_changed(), make_state({"token": "ghp_plain"}))
    assert "juju add-secret" in out.unit_status.message
    assert "ghp_plain" not in out.unit_status.message


def test_several_problems_are_reported_together(ctx: testing.Context) -> None:
    out = ctx.run(ctx.on.config_changed(), make_state({"path": "", "vm-cpu": 0, "backend": "x"}))
    message = out.unit_status.message
    assert message.index("path:") < message.index("vm-cpu:") < message.index("backend:")


def test_valid_config_is_active(ctx: testing.Context, fake_manager: FakeManager) -> None:
    out = ctx.run(ctx.on.config_changed(), make_state())
    assert out.unit_status == testing.ActiveStatus("0 runners: 0 idle, 0 busy")
    assert fake_manager.state is not None
    assert fake_manager.state.paths == ("acme",)
    assert fake_manager.state.token.get_secret_value() == TOKEN


def test_full_valid_config_is_active(ctx: testing.Context, fake_manager: FakeManager) -> None:
    config = {
        "path": "acme, acme-labs/app, enterprise:big-corp",
        "webhook-secret": WEBHOOK_SECRET_OBJ.id,
        "virtual-machines": 3,
        "vm-cpu": 4,
        "vm-memory": "16G",
        "vm-disk": "20480",
        "labels": "large, gpu, size=large",
        "group": "ci runners",
        "reconcile-interval": 5,
        "backend": "aws",
        "backend-config": BACKEND_SECRET.id,
        "max-total-runners": 50,
        "per-owner-max-runners": 20,
        "denylist": "10.0.0.0/8, 192.168.1.7, fd00::/8",
        "dockerhub-mirror": "https://mirror.example.com:5000",
        "runner-storage": "memory",
        "base-image": "ubuntu:24.04",
        "image-build-interval": 0,
        "redis-url": "redis://10.0.0.5:6379/0",
    }
    out = ctx.run(ctx.on.config_changed(), make_state(config))
    assert isinstance(out.unit_status, testing.ActiveStatus)
    state = fake_manager.state
    assert state is not None
    assert state.paths == ("acme", "acme-labs/app", "enterprise:big-corp")
    assert state.webhook_secret is not None
    assert state.webhook_secret.get_secret_value() == WEBHOOK_SECRET
    (group,) = state.runner_groups
    assert group.min_idle == group.max_runners == 3
    assert group.memory == 16 * 1024**3 and group.disk == 20 * 1024**3
    assert group.labels[3:] == ("large", "gpu", "size=large")
    assert group.runner_group == "ci runners"
    assert state.backend_config["aws"]["secret_access_key"] == AWS_SECRET_KEY
    assert state.denylist == ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8")
    assert state.image == "github-runner-ubuntu-24.04"
    assert (state.redis_url, state.redis_source) == ("redis://10.0.0.5:6379/0", "option")


def test_runner_storage_cannot_change_after_install(ctx: testing.Context) -> None:
    installed = ctx.run(ctx.on.install(), make_state({"runner-storage": "juju-storage"}))
    assert isinstance(installed.unit_status, testing.ActiveStatus)
    changed = ctx.run(
        ctx.on.config_changed(),
        testing.State(
            config={**installed.config, "runner-storage": "memory"},
            secrets=installed.secrets,
            stored_states=installed.stored_states,
        ),
    )
    assert changed.unit_status == testing.BlockedStatus(
        "runner-storage: cannot change after deploy (was juju-storage, now memory); set it back"
    )
    # Setting it back unblocks.
    restored = ctx.run(
        ctx.on.config_changed(),
        testing.State(
            config={**installed.config, "runner-storage": "juju-storage"},
            secrets=installed.secrets,
            stored_states=changed.stored_states,
        ),
    )
    assert isinstance(restored.unit_status, testing.ActiveStatus)


def test_runner_storage_recorded_even_when_install_config_is_invalid(ctx: testing.Context) -> None:
    installed = ctx.run(ctx.on.install(), make_state({"path": "", "runner-storage": "memory"}))
    assert isinstance(installed.unit_status, testing.BlockedStatus)
    out = ctx.run(
        ctx.on.config_changed(),
        testing.State(
            config={**installed.config, "path": "acme", "runner-storage": "juju-storage"},
            secrets=installed.secrets,
            stored_states=installed.stored_states,
        ),
    )
    assert out.unit_status.message.startswith("runner-storage: cannot change after deploy")


def test_test_mode_accepts_plain_secrets(ctx: testing.Context, fake_manager: FakeManager) -> None:
    config = {
        "test-mode": True,
        "token": "ghp_plain",
        "webhook-secret": "hmac",
        "backend-config": "{fake: {latency: 1}}",
        "backend": "fake",
    }
    out = ctx.run(ctx.on.config_changed(), make_state(config))
    assert isinstance(out.unit_status, testing.ActiveStatus)
    assert fake_manager.state is not None
    assert fake_manager.state.token.get_secret_value() == "ghp_plain"
    assert fake_manager.state.backend_config == {"fake": {"latency": 1}}


def test_secrets_are_not_in_repr(fake_manager: FakeManager, ctx: testing.Context) -> None:
    config = {"webhook-secret": WEBHOOK_SECRET_OBJ.id, "backend": "aws"}
    config |= {"backend-config": BACKEND_SECRET.id, "redis-url": "redis://:pw12345@h:1/0"}
    ctx.run(ctx.on.config_changed(), make_state(config))
    state = fake_manager.state
    assert state is not None
    for text in (repr(state), str(state)):
        for secret in (TOKEN, WEBHOOK_SECRET, AWS_SECRET_KEY, "pw12345"):
            assert secret not in text


def test_runner_groups_replace_single_group_options(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    groups = """
    - name: small
      labels: [small]
      min-idle: 2
      max-runners: 10
      memory: 4GiB
    - name: large
      labels: large, x-large
      backends: [lxd, openstack]
      max_runners: 5
      cpu: 8
      memory: 32GiB
      disk: 100GiB
      group: big-jobs
      max-lifetime: 6h
    """
    config = {"runner-groups": groups, "vm-memory": "not used", "virtual-machines": -1}
    out = ctx.run(ctx.on.config_changed(), make_state(config))
    assert isinstance(out.unit_status, testing.ActiveStatus), out.unit_status
    assert fake_manager.state is not None
    small, large = fake_manager.state.runner_groups
    assert (small.name, small.min_idle, small.max_runners, small.backends) == (
        "small",
        2,
        10,
        ("lxd",),
    )
    assert large.backends == ("lxd", "openstack")
    assert large.runner_group == "big-jobs"
    assert large.max_lifetime == 6 * 3600
    assert "x-large" in large.labels


def test_to_manager_config_has_the_design_format() -> None:
    state = make_state(
        {
            "path": "acme, acme-labs/app",
            "backend": "aws",
            "backend-config": BACKEND_SECRET.id,
            "webhook-secret": WEBHOOK_SECRET_OBJ.id,
            "runner-groups": "[{name: small, min-idle: 2, max-runners: 20, memory: 4GiB, disk: 20GiB}]",
            "reconcile-interval": 1,
            "denylist": "10.0.0.0/8",
            "max-total-runners": 50,
        }
    )
    charm_state = CharmState.from_config(
        state.config, read_secret=read_secret_from(state), arch="x64"
    )
    config = charm_state.to_manager_config()
    assert config["github"] == {
        "url": "https://api.github.com",
        "paths": ["acme", "acme-labs/app"],
        "token": TOKEN,
    }
    assert config["webhook"] == {"secret": WEBHOOK_SECRET}
    assert config["redis"] == {}  # the manager's default: the redis-server on the unit
    assert config["reconcile_interval"] == "1m"
    assert (config["max_total_runners"], config["per_owner_max_runners"]) == (50, 0)
    assert config["denylist"] == ["10.0.0.0/8"]
    assert config["runner_groups"] == [
        {
            "name": "small",
            "labels": ["self-hosted", "linux", "x64"],
            "backend": "aws",
            "image": "github-runner-debian-bookworm",
            "cpu": 2,
            "memory": "4GiB",
            "disk": "20GiB",
            "min_idle": 2,
            "max_runners": 20,
            "runner_group": "default",
        }
    ]
    assert config["backends"]["aws"]["secret_access_key"] == AWS_SECRET_KEY
    redacted = yaml.safe_dump(charm_state.to_manager_config(redact=True))
    for secret in (TOKEN, WEBHOOK_SECRET, AWS_SECRET_KEY):
        assert secret not in redacted
    assert "secret_access_key: '**********'" in redacted


def test_backend_config_per_backend_mapping() -> None:
    secret = testing.Secret(
        {"config": "{openstack: {cloud: c1}, aws: {region: r1}}"}, id="secret:" + "m" * 20
    )
    groups = "[{name: a, backends: [openstack, lxd]}]"
    config = {**DEFAULTS, "path": "acme", "token": "t", "test-mode": True}
    config |= {"backend-config": secret.id, "runner-groups": groups}
    state = CharmState.from_config(config, read_secret=lambda _: secret.tracked_content)
    assert state.backend_config == {"openstack": {"cloud": "c1"}, "lxd": {}}


def test_backend_config_from_secret_keys() -> None:
    content = {"region": "eu", "secret-key": "k"}
    config = {**DEFAULTS, "path": "acme", "token": "t", "test-mode": True}
    config |= {"backend": "gcp", "backend-config": "secret:" + "k" * 20}
    state = CharmState.from_config(config, read_secret=lambda _: content)
    assert state.backend_config == {"gcp": content}


@pytest.mark.parametrize(
    ("databag", "url"),
    [
        ({"hostname": "10.1.2.3", "port": "6379"}, "redis://10.1.2.3:6379/0"),
        ({"hostname": "fd00::1", "port": "6380"}, "redis://[fd00::1]:6380/0"),
        ({"url": "rediss://redis.example:6380/1"}, "rediss://redis.example:6380/1"),
    ],
)
def test_redis_from_relation(
    ctx: testing.Context, fake_manager: FakeManager, databag: dict[str, str], url: str
) -> None:
    relation = testing.Relation("redis", remote_units_data={0: databag})
    out = ctx.run(ctx.on.relation_changed(relation), make_state(relations=(relation,)))
    assert isinstance(out.unit_status, testing.ActiveStatus)
    assert fake_manager.state is not None
    assert (fake_manager.state.redis_url, fake_manager.state.redis_source) == (url, "relation")


def test_redis_url_option_wins_over_relation(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    relation = testing.Relation("redis", remote_app_data={"hostname": "r", "port": "1"})
    state = make_state({"redis-url": "redis://opt:6379/0"}, relations=(relation,))
    ctx.run(ctx.on.config_changed(), state)
    assert fake_manager.state is not None
    assert fake_manager.state.redis_url == "redis://opt:6379/0"


def test_redis_relation_without_data_waits(ctx: testing.Context, fake_manager: FakeManager) -> None:
    relation = testing.Relation("redis")
    out = ctx.run(ctx.on.relation_joined(relation), make_state(relations=(relation,)))
    assert out.unit_status == testing.WaitingStatus(
        "waiting for the redis relation to publish its hostname and port"
    )
    assert fake_manager.state is None, "the manager must not start on the wrong Redis"


def test_redis_relation_bad_port_blocks(ctx: testing.Context) -> None:
    relation = testing.Relation("redis", remote_units_data={0: {"hostname": "h", "port": "x"}})
    out = ctx.run(ctx.on.relation_changed(relation), make_state(relations=(relation,)))
    assert out.unit_status == testing.BlockedStatus('redis relation: port "x" is not a TCP port')


def test_no_redis_means_embedded(fake_manager: FakeManager, ctx: testing.Context) -> None:
    ctx.run(ctx.on.start(), make_state())
    assert fake_manager.state is not None
    assert (fake_manager.state.redis_url, fake_manager.state.redis_source) == (None, "embedded")


def test_secret_changed_applies_the_new_token(
    ctx: testing.Context, fake_manager: FakeManager
) -> None:
    rotated = testing.Secret(
        {"token": "ghp_old"}, latest_content={"token": "ghp_new"}, id=TOKEN_SECRET.id
    )
    state = testing.State(config={"path": "acme", "token": rotated.id}, secrets={rotated})
    ctx.run(ctx.on.secret_changed(rotated), state)
    assert fake_manager.state is not None
    assert fake_manager.state.token.get_secret_value() == "ghp_new"


@pytest.mark.parametrize(
    "event",
    ["install", "start", "config_changed", "upgrade_charm", "update_status"],
)
def test_lifecycle_events_apply_the_config(
    ctx: testing.Context, fake_manager: FakeManager, event: str
) -> None:
    out = ctx.run(getattr(ctx.on, event)(), make_state())
    assert fake_manager.applied == 1
    assert isinstance(out.unit_status, testing.ActiveStatus)


def test_stop_removes_every_runner(ctx: testing.Context, fake_manager: FakeManager) -> None:
    fake_manager.add_runner(status="idle")
    fake_manager.add_runner(status="busy")
    ctx.run(ctx.on.stop(), make_state())
    assert fake_manager.runners == {}


def test_invalid_config_deletes_nothing(ctx: testing.Context, fake_manager: FakeManager) -> None:
    ctx.run(ctx.on.config_changed(), make_state())
    fake_manager.add_runner()
    before = dict(fake_manager.runners)
    out = ctx.run(ctx.on.config_changed(), make_state({"path": "a/b/c"}))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert fake_manager.runners == before
    assert fake_manager.state is not None and fake_manager.state.paths == ("acme",)


def test_status_is_computed_for_events_the_charm_does_not_observe(ctx: testing.Context) -> None:
    out = ctx.run(ctx.on.leader_elected(), make_state({"path": ""}))
    assert out.unit_status.message.startswith("path: ")


def test_long_values_are_shortened_in_messages() -> None:
    config = {**DEFAULTS, "path": "acme", "token": "t", "test-mode": True, "vm-memory": "x" * 5000}
    with pytest.raises(CharmConfigInvalidError) as err:
        CharmState.from_config(config, read_secret=dict)
    assert len(err.value.msg) < 120
    assert err.value.msg.startswith('vm-memory: "xxx')


def test_huge_numbers_are_not_sizes() -> None:
    config = {**DEFAULTS, "path": "acme", "token": "t", "test-mode": True, "vm-disk": "9" * 400}
    with pytest.raises(
        CharmConfigInvalidError,
        match=r"^vm-disk: .* is not a size like 7GiB( \(it is far too large\))?$",
    ):
        CharmState.from_config(config, read_secret=dict)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"webhook-secret": WEBHOOK_SECRET_OBJ.id, "redis-url": "redis://:pw@10.0.0.5:6379/0"},
        {"backend": "aws", "backend-config": BACKEND_SECRET.id, "denylist": "10.0.0.0/8,fd00::/8"},
        {"path": "enterprise:big, acme/app", "labels": "large,size=large", "vm-memory": "512MiB"},
        {
            "runner-groups": "- {name: small, min-idle: 2, max-runners: 20, memory: 4GiB}\n"
            "- {name: large, backends: [lxd, openstack], cpu: 8, max-lifetime: 6h, group: big}",
            "max-total-runners": 50,
            "per-owner-max-runners": 20,
        },
    ],
)
def test_the_manager_accepts_to_manager_config(config: dict[str, Any]) -> None:
    """What the charm produces is a valid config for `github_runner_manager` as it stands."""
    manager_config = pytest.importorskip("github_runner_manager.config")
    state = make_state(config)
    charm_state = CharmState.from_config(state.config, read_secret=read_secret_from(state))
    parsed = manager_config.parse_config(charm_state.to_manager_config())
    assert [group.name for group in parsed.runner_groups] == [
        group.name for group in charm_state.runner_groups
    ]
    assert parsed.github.resolve_token().get_secret_value() == TOKEN
