"""One contract, every backend: the same tests against fake, lxd, docker, aws, gcp, openstack and vsphere.

Each backend talks to its real part (``conftest.py``): LXD, dockerd, moto_server, vcsim and the GCE and
OpenStack emulators. Orphans, capacity failures and bad credentials are produced the provider's way
(``harnesses.py``). The bad-credentials case exists only for backends that take credentials (aws, gcp,
openstack, vsphere): fake has none, and lxd and docker are reached here through local unix sockets,
where there is nothing to get wrong but file permissions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator

import pytest

from github_runner_manager.backends.base import (
    CONTRACT_VERSION,
    TAG_GROUP,
    TAG_OWNER,
    TAG_PREFIX,
    TAG_UNIT,
    AuthError,
    CapacityError,
    InstanceNotFound,
    InstanceSpec,
    InstanceState,
)
from tests.functional.backends.harnesses import HARNESSES, WITH_CREDENTIALS, WITH_USER_DATA, Harness

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # openstacksdk's own

ALL = list(HARNESSES)
#: What a GitHub token looks like; it must never reach an instance.
GITHUB_TOKEN = "ghp_" + "T0kenThatMustNeverLeaveTheManager0000"


@pytest.fixture
def prefix() -> str:
    """A prefix no other test (or xdist worker) uses: instances are found by it."""
    return "ct" + secrets.token_hex(3)


@pytest.fixture
def harness(request: pytest.FixtureRequest, prefix: str) -> Iterator[Harness]:
    needs, build = HARNESSES[request.param]
    made = build(*(request.getfixturevalue(name) for name in needs))
    yield made
    made.cleanup(prefix)


def spec_for(harness: Harness, prefix: str, *, unit: str = "unit-0", cpu: int = 1) -> InstanceSpec:
    name = f"{prefix}-small-{secrets.token_hex(3)}"
    jit = "JIT-" + secrets.token_urlsafe(24)
    return InstanceSpec(
        name=name,
        group="small",
        image=harness.image,
        cpu=cpu,
        memory=512 * 1024**2,
        disk=10 * 1024**3,
        # A script (the docker backend runs those) that is also what cloud-init takes as user-data.
        user_data=f"#!/bin/sh\n# runner {name}\nexport RUNNER_JIT='{jit}'\nexec sleep 600\n",
        jit_config=jit,
        tags={TAG_PREFIX: prefix, TAG_UNIT: unit, TAG_GROUP: "small", TAG_OWNER: "acme"},
    )


def test_contract_version_is_one() -> None:
    assert CONTRACT_VERSION == 1


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_create_get_list_delete(harness: Harness, prefix: str) -> None:
    backend = harness.backend(prefix)
    spec = spec_for(harness, prefix)
    created = backend.create(spec)
    assert created.name == spec.name
    assert created.backend == harness.name
    for key, value in spec.tags.items():
        assert created.tags[key] == value

    got = backend.get(spec.name)
    assert got.name == spec.name
    assert got.tags == created.tags
    assert got.state in {InstanceState.PENDING, InstanceState.RUNNING}
    if got.created_at is not None:
        assert abs(got.created_at - time.time()) < 3600

    assert [i.name for i in backend.list()] == [spec.name]
    assert [i.name for i in backend.list(prefix=prefix)] == [spec.name]
    assert [i.name for i in backend.list(tags={TAG_UNIT: "unit-0", TAG_GROUP: "small"})] == [
        spec.name
    ]
    assert backend.list(tags={TAG_UNIT: "another-unit"}) == []
    assert backend.list(prefix=prefix + "x") == []

    backend.delete(spec.name)
    with pytest.raises(InstanceNotFound):
        backend.get(spec.name)
    assert backend.list() == []


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_delete_is_idempotent(harness: Harness, prefix: str) -> None:
    backend = harness.backend(prefix)
    backend.delete(f"{prefix}-small-never")
    spec = spec_for(harness, prefix)
    backend.create(spec)
    backend.delete(spec.name)
    backend.delete(spec.name)
    with pytest.raises(InstanceNotFound):
        backend.get(spec.name)


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_capacity_failure_is_a_capacity_error(harness: Harness, prefix: str) -> None:
    spec = spec_for(harness, prefix)
    if harness.name == "docker":
        spec = spec_for(harness, prefix, cpu=(os.cpu_count() or 1) + 1)
    with harness.out_of_capacity(prefix) as backend, pytest.raises(CapacityError):
        backend.create(spec)
    # Nothing is left behind, and the backend works again once there is room.
    fresh = harness.backend(prefix)
    assert fresh.list() == []
    assert fresh.create(spec_for(harness, prefix)).tags[TAG_PREFIX] == prefix


@pytest.mark.parametrize("harness", WITH_CREDENTIALS, indirect=True)
def test_bad_credentials_are_an_auth_error(harness: Harness, prefix: str) -> None:
    backend = harness.bad_credentials(prefix)
    assert backend is not None
    context = harness.enforced_auth() if harness.name == "aws" else contextlib.nullcontext()  # type: ignore[attr-defined]
    with context:
        with pytest.raises(AuthError):
            backend.list()
        with pytest.raises(AuthError):
            backend.create(spec_for(harness, prefix))


@pytest.mark.parametrize("harness", ALL, indirect=True)
def test_orphan_is_found_by_list(harness: Harness, prefix: str) -> None:
    """An instance with our prefix that the manager never recorded (made with the provider's client)."""
    orphan = f"{prefix}-small-orphan"
    tags = {TAG_PREFIX: prefix, TAG_UNIT: "crashed-unit", TAG_GROUP: "small", TAG_OWNER: "acme"}
    harness.make_orphan(orphan, tags)
    backend = harness.backend(prefix)
    found = {i.name: i for i in backend.list()}
    assert orphan in found
    assert found[orphan].tags[TAG_UNIT] == "crashed-unit"
    assert [i.name for i in backend.list(tags={TAG_UNIT: "crashed-unit"})] == [orphan]
    assert backend.list(tags={TAG_UNIT: "unit-0"}) == []
    assert backend.get(orphan).name == orphan
    assert backend.remove_all() == 1
    assert backend.list() == []


@pytest.mark.parametrize("harness", WITH_USER_DATA, indirect=True)
def test_user_data_read_back_has_the_jit_config_and_no_token(harness: Harness, prefix: str) -> None:
    backend = harness.backend(prefix)
    spec = spec_for(harness, prefix)
    instance = backend.create(spec)
    stored = harness.user_data(instance)
    assert stored == spec.user_data
    assert spec.jit_config in stored
    assert GITHUB_TOKEN not in stored and "ghp_" not in stored and "github_pat_" not in stored
