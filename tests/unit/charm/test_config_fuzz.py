"""Generated configs: the charm never raises, and is blocked exactly when validation fails."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ops import testing

from charm import GithubRunnerCharm
from charm_manager import FakeManager
from charm_state import OPTIONS, RUNNER_STORAGES, CharmConfigInvalidError, CharmState
from github_runner_manager.config import parse_config
from tests.unit.charm.helpers import (
    BACKEND_SECRET,
    CONFIG_OPTIONS,
    TOKEN_SECRET,
    WEBHOOK_SECRET_OBJ,
    context,
    read_secret_from,
    stored_state,
)

YAML_FRAGMENTS = [
    "",
    " ",
    "~",
    "null",
    "[]",
    "{}",
    "[",
    "{a: 1",
    "- a\n- b",
    "a: b: c",
    "- name: x\n  min-idle: 1",
    "[{name: small}]",
    "[{name: small, min-idle: 2, max-runners: 1}]",
    "[{name: a, backends: [lxd, aws]}, {name: b, backend: fake}]",
    "[{name: Bad_Name}]",
    "[{name: a, memory: 1MiB}]",
    "[{name: a, labels: [x, 'y z']}]",
    "[{name: a, max-lifetime: 30s}]",
    "[1, 2]",
    "!!binary aGVsbG8=",
    "!!python/object:os.system",
    "&a [*a, *a]",
    "2001-13-45",
    "0x1F",
    "1e400",
    "yes",
    "'",
    '"',
    "\t- tab",
    "key: [unclosed",
    "- - - - - -",
    "a: 1\na: 2",
    "%YAML 1.2\n---\n[]",
    "---\n...\n---",
    "{aws: {region: x}, lxd: null}",
    "{openstack: [1, 2]}",
    "region: eu-west-1\nkey: abc",
    "7GiB",
    "10.0.0.0/8",
    "secret:" + "z" * 20,
]

#: Values an operator might plausibly set, so that a good share of configs are valid.
PLAUSIBLE: dict[str, list[Any]] = {
    "path": ["acme", "acme/app", "enterprise:big-corp", "acme, acme-labs/app"],
    "token": [TOKEN_SECRET.id, WEBHOOK_SECRET_OBJ.id],
    "webhook-secret": ["", WEBHOOK_SECRET_OBJ.id],
    "virtual-machines": [0, 1, 5],
    "vm-cpu": [1, 2, 8],
    "vm-memory": ["7GiB", "512MiB", "16G", "4096"],
    "vm-disk": ["10GiB", "1GiB", "20G"],
    "labels": ["", "large", "large, gpu", "size=large"],
    "group": ["default", "big jobs"],
    "reconcile-interval": [1, 10, 1440],
    "backend": ["lxd", "docker", "aws", "gcp", "openstack", "vsphere", "fake"],
    "backend-config": ["", BACKEND_SECRET.id],
    "runner-groups": [
        "",
        "[{name: small, min-idle: 2, max-runners: 4}]",
        "- name: a\n  backends: [lxd, openstack]\n- name: b\n  memory: 32GiB",
    ],
    "max-total-runners": [0, 10],
    "per-owner-max-runners": [0, 3],
    "denylist": ["", "10.0.0.0/8", "10.0.0.0/8, fd00::/8", "192.168.1.1"],
    "dockerhub-mirror": ["", "https://mirror.example.com", "http://10.0.0.2:5000"],
    "runner-storage": ["juju-storage", "memory"],
    "base-image": ["debian:bookworm", "ubuntu:noble", "ubuntu:24.04"],
    "image-build-interval": [0, 6, 720],
    "redis-url": ["", "redis://10.0.0.5:6379/0", "rediss://:pw@redis.example:6380/1"],
    "test-mode": [False, True],
}

_STRING_JUNK = st.one_of(
    st.sampled_from(YAML_FRAGMENTS),
    st.text(max_size=40),
    st.text(alphabet="abcxyz019 ,:/=-_.[]{}\n", max_size=30),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.just("9" * 400),
)
_INT_JUNK = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=3),
)


def _option_value(option: str) -> st.SearchStrategy[Any]:
    """Juju-typed values for `option`: mostly plausible, sometimes junk of the right type."""
    kind = CONFIG_OPTIONS[option]["type"]
    junk = {"string": _STRING_JUNK, "int": _INT_JUNK, "boolean": st.booleans()}[kind]
    plausible = st.sampled_from(PLAUSIBLE[option])
    return st.integers(min_value=0, max_value=11).flatmap(
        lambda roll: junk if roll == 0 else plausible
    )


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A Juju config: each option left at its default, plausible, or junk."""
    config: dict[str, Any] = {}
    for option in OPTIONS:
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            continue  # Juju's default
        config[option] = draw(_option_value(option))
    return config


secret_contents = st.one_of(
    st.fixed_dictionaries({"config": _STRING_JUNK}),
    st.dictionaries(
        st.sampled_from(["region", "config", "token", "value"]), _STRING_JUNK, min_size=1
    ),
)


def test_generated_configs_block_exactly_when_validation_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = context()
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        config=configs(),
        backend_content=secret_contents,
        installed=st.sampled_from([None, *RUNNER_STORAGES]),
    )
    def check(
        config: dict[str, Any], backend_content: dict[str, str], installed: str | None
    ) -> None:
        fake = FakeManager()
        monkeypatch.setattr(GithubRunnerCharm, "manager_factory", lambda: fake)
        backend_secret = testing.Secret(backend_content, id=BACKEND_SECRET.id)
        state = testing.State(
            config=config,
            secrets={TOKEN_SECRET, WEBHOOK_SECRET_OBJ, backend_secret},
            stored_states={stored_state(installed)} if installed else set(),
        )

        # The verdict, computed without the charm.
        raw_storage = config.get("runner-storage", "juju-storage")
        recorded = installed or (raw_storage if raw_storage in RUNNER_STORAGES else None)
        try:
            charm_state = CharmState.from_config(
                config, read_secret=read_secret_from(state), installed_runner_storage=recorded
            )
            expected_block = None
            # Whatever the charm accepts, the manager accepts too.
            parse_config(charm_state.to_manager_config())
        except CharmConfigInvalidError as err:
            expected_block = str(err)

        out = ctx.run(ctx.on.config_changed(), state)  # raises if the charm raised

        if expected_block is None:
            outcomes["active"] += 1
            assert isinstance(out.unit_status, testing.ActiveStatus), out.unit_status
            assert fake.state is not None
        else:
            outcomes["blocked"] += 1
            assert out.unit_status == testing.BlockedStatus(expected_block)
            assert fake.state is None
            # Secret content never shows, unless the operator also typed it into an option, or
            # the charm's own text holds it anyway (a hint's example like "10.0.0.0/8"): the same
            # config with neutral secret content gives that text too
            typed = " ".join(str(value) for value in config.values())
            neutral = testing.State(
                config=config,
                secrets={
                    TOKEN_SECRET,
                    WEBHOOK_SECRET_OBJ,
                    testing.Secret(
                        {k: "n" * max(1, len(v)) for k, v in backend_content.items()},
                        id=BACKEND_SECRET.id,
                    ),
                },
            )
            try:
                CharmState.from_config(
                    config, read_secret=read_secret_from(neutral), installed_runner_storage=recorded
                )
                charm_text = ""
            except CharmConfigInvalidError as err:
                charm_text = str(err)
            for secret in backend_content.values():
                if len(secret) > 8 and secret not in typed and secret not in charm_text:
                    assert secret not in out.unit_status.message

    check()
    # Both verdicts are exercised a fair number of times.
    assert outcomes["active"] >= 25, outcomes
    assert outcomes["blocked"] >= 100, outcomes


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(YAML_FRAGMENTS),
    st.lists(st.text(max_size=5), max_size=3),
)


@settings(max_examples=300, deadline=None, database=None)
@given(config=st.dictionaries(st.sampled_from(OPTIONS), _ANY_VALUE))
def test_validator_only_ever_raises_config_errors(config: dict[str, Any]) -> None:
    """Whatever the types, validation yields a state or a `CharmConfigInvalidError`."""
    state = testing.State(secrets={TOKEN_SECRET, WEBHOOK_SECRET_OBJ, BACKEND_SECRET})
    try:
        CharmState.from_config(config, read_secret=read_secret_from(state))
    except CharmConfigInvalidError as err:
        assert err.errors
        assert all(
            message.split(":", 1)[0] in (*OPTIONS, "redis relation") for message in err.errors
        )
